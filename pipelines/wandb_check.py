"""W&B settings checked before a run writes anything: the mode is one W&B knows, and ``online``
has credentials (``WANDB_API_KEY`` or a ``wandb login`` entry in ~/.netrc), so a typo or a missing
login is one line instead of a W&B traceback after RUN_DIR/config.yaml was written."""

from __future__ import annotations

import netrc
import os
from urllib.parse import urlsplit

from parsetune.errors import UserError

WANDB_MODES = ("offline", "online", "disabled")
DEFAULT_WANDB_HOST = "https://api.wandb.ai"


def wandb_trackers(trainer_config) -> list:
    from levanter.tracker.wandb import WandbConfig

    trackers = trainer_config.tracker if isinstance(trainer_config.tracker, (list, tuple)) else [trainer_config.tracker]
    return [t for t in trackers if isinstance(t, WandbConfig)]


def check_wandb_mode(config) -> None:
    """``wandb_mode`` (and any ``trainer.tracker.mode``) is offline, online or disabled."""
    modes = [("wandb_mode", config.wandb_mode)] + [("trainer.tracker.mode", t.mode) for t in wandb_trackers(config.trainer) if t.mode is not None]
    for key, mode in modes:
        if mode not in WANDB_MODES:
            raise UserError(f"{key}: {mode!r} is not a W&B mode (expected one of {', '.join(WANDB_MODES)})")


def has_wandb_login(env=os.environ) -> bool:
    """An API key in the environment or a netrc entry for the W&B host; no network."""
    if env.get("WANDB_API_KEY"):
        return True
    host = urlsplit(env.get("WANDB_BASE_URL") or DEFAULT_WANDB_HOST).netloc or urlsplit(DEFAULT_WANDB_HOST).netloc
    home = env.get("HOME") or os.path.expanduser("~")
    paths = [os.path.expanduser(env["NETRC"])] if env.get("NETRC") else [os.path.join(home, ".netrc"), os.path.join(home, "_netrc")]
    for path in paths:  # where W&B looks (wandb/sdk/lib/wbauth/wbnetrc.py)
        try:
            entry = netrc.netrc(path).authenticators(host.split(":")[0])
        except (netrc.NetrcParseError, OSError):
            continue
        if entry and entry[2]:
            return True
    return False


def check_wandb_login(config, env=os.environ) -> None:
    """``online`` W&B needs credentials; fail before anything is written rather than inside wandb.init."""
    check_wandb_mode(config)
    online = any((t.mode or config.wandb_mode) == "online" for t in wandb_trackers(config.trainer))
    if online and not has_wandb_login(env):
        raise UserError(
            "wandb_mode online: no W&B credentials (set WANDB_API_KEY or run `wandb login`), or use --wandb_mode offline"
        )
