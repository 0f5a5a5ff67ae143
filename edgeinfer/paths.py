"""Every filesystem location edgeinfer uses, in one place.

``EDGEINFER_HOME`` moves all state (config, data, cache, logs, runtime) under one directory;
tests set it per test. ``EDGEINFER_MODELS_DIR`` moves only the model store, so a test session
can share one set of pulled models across isolated homes. ``EDGEINFER_SOCKET`` overrides the
socket path. Callers pass the results down; nothing deeper reads the environment.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from edgeinfer.errors import DaemonError

APP = "edgeinfer"
# sun_path is 108 bytes on Linux and 104 on macOS/BSD, including the terminating NUL.
_SUN_PATH_MAX = 104 if os.uname().sysname == "Darwin" else 108


@dataclass(frozen=True)
class Paths:
    config_dir: Path
    data_dir: Path
    cache_dir: Path
    log_dir: Path
    runtime_dir: Path
    models_dir: Path

    @property
    def user_models_toml(self) -> Path:
        return self.config_dir / "models.toml"

    @property
    def router_weights(self) -> Path:
        """The classifier ``edgeinfer router train`` wrote; preferred over the bundled one."""
        return self.data_dir / "router.json"

    @property
    def distill_db(self) -> Path:
        """Captured large-tier answers (``[router] distill = true``)."""
        return self.data_dir / "distill.sqlite"

    @property
    def router_outcomes(self) -> Path:
        """Cascade verdicts the daemon logs, for ``edgeinfer router train``."""
        return self.data_dir / "router_outcomes.jsonl"

    @property
    def default_socket(self) -> Path:
        return self.runtime_dir / "edgeinfer.sock"


def resolve(env: dict[str, str] | None = None) -> Paths:
    """Resolve all locations from the environment (``os.environ`` by default)."""
    env = dict(os.environ) if env is None else env
    home = env.get("EDGEINFER_HOME")
    if home:
        root = Path(home).expanduser().resolve()
        paths = Paths(
            config_dir=root / "config",
            data_dir=root / "data",
            cache_dir=root / "cache",
            log_dir=root / "logs",
            runtime_dir=root / "run",
            models_dir=root / "data" / "models",
        )
    else:
        dirs = platformdirs.PlatformDirs(APP, appauthor=False)
        data = Path(dirs.user_data_dir)
        with warnings.catch_warnings():
            # Without XDG_RUNTIME_DIR platformdirs falls back to a private dir under /tmp and
            # warns; `edgeinfer paths` and the daemon's start line say where the socket is.
            warnings.simplefilter("ignore", platformdirs.RuntimeDirWarning)
            runtime = Path(dirs.user_runtime_dir)
        paths = Paths(
            config_dir=Path(dirs.user_config_dir),
            data_dir=data,
            cache_dir=Path(dirs.user_cache_dir),
            log_dir=Path(dirs.user_log_dir),
            runtime_dir=runtime,
            models_dir=data / "models",
        )
    models = env.get("EDGEINFER_MODELS_DIR")
    if models:
        paths = Paths(**{**paths.__dict__, "models_dir": Path(models).expanduser().resolve()})
    return paths


def socket_path(
    paths: Paths, override: str | None = None, env: dict[str, str] | None = None
) -> Path:
    """The socket path: ``--socket``, then ``EDGEINFER_SOCKET``, then the runtime dir."""
    env = dict(os.environ) if env is None else env
    raw = override or env.get("EDGEINFER_SOCKET")
    path = Path(raw).expanduser().absolute() if raw else paths.default_socket
    check_socket_path(path)
    return path


def check_socket_path(path: Path) -> None:
    """Refuse a path the kernel would silently truncate (AF_UNIX ``sun_path`` limit)."""
    size = len(os.fsencode(str(path)))
    if size >= _SUN_PATH_MAX:
        raise DaemonError(
            f"socket path is {size} bytes, over the AF_UNIX limit of {_SUN_PATH_MAX - 1}: {path}"
            " (pass a shorter --socket or set EDGEINFER_SOCKET)"
        )


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` owner-only (0700); tighten it if it already exists and is ours."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_uid == os.getuid():
        path.chmod(0o700)
    return path
