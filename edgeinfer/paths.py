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
        """Cascade verdicts with their prompts, for ``edgeinfer router train``: only with
        ``[router] log_prompts = true``; owner-only and rotated (routing/router.py)."""
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


def make_private_dirs(path: Path) -> Path:
    """Create the missing parts of ``path`` owner-only (0700), leaving existing ones as they are.

    ``Path.mkdir(parents=True, mode=...)`` gives missing parents the umask's default mode and
    the last part the mode *minus* the umask; this sets 0700 on every folder it creates. For
    folders that may be shared on purpose (``EDGEINFER_MODELS_DIR``), which must not be changed.
    """
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:  # another process made it first: not ours to change
            continue
        folder.chmod(0o700)  # the umask may have taken bits off
    return path


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` owner-only (0700); tighten it if it already exists and is ours.

    For edgeinfer's own state dirs (data, cache, config, logs, the socket's dir): conversations,
    cached answers and logged prompts are readable by whoever can list and open them.
    """
    make_private_dirs(path)
    if path.stat().st_uid == os.getuid():
        path.chmod(0o700)
    return path


def ensure_private_file(path: Path) -> Path:
    """Create ``path`` empty and owner-only (0600) if missing; tighten it if it exists and is ours.

    Its folder is made private too. Creating the file with mode 0600 and then ``fchmod``-ing it
    does not depend on the umask, and there is no moment when the file is readable by others.
    """
    ensure_private_dir(path.parent)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_uid == os.getuid():
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return path


SQLITE_SIDECARS = ("-wal", "-shm", "-journal")


def ensure_private_sqlite(path: Path) -> Path:
    """Make a SQLite database owner-only before it is opened: the file, and any ``-wal``,
    ``-shm`` or ``-journal`` left by an earlier run (SQLite gives the ones it creates later
    the database file's own mode)."""
    ensure_private_file(path)
    for suffix in SQLITE_SIDECARS:
        sidecar = Path(f"{path}{suffix}")
        if sidecar.exists() and sidecar.stat().st_uid == os.getuid():
            sidecar.chmod(0o600)
    return path


def append_private(path: Path, data: bytes, *, max_bytes: int, keep: int) -> None:
    """Append ``data`` to an owner-only log file, rotating it first (``.1`` ... ``.{keep}``,
    the oldest dropped) when ``data`` would take it past ``max_bytes``. Callers serialise
    calls on one path."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        size = 0
    if size and size + len(data) > max_bytes:
        for n in range(keep, 0, -1):
            older = path.with_name(f"{path.name}.{n - 1}") if n > 1 else path
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{n}"))
        path.unlink(missing_ok=True)  # keep = 0: nothing older is kept
    ensure_private_file(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
