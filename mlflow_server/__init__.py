"""A local MLflow tracking server per root folder, started detached and stopped by pid.

Example::

    from mlflow_server import ensure_server, stop_server

    info, started = ensure_server(root)
    # ... log runs to info.uri ...
    if started:
        stop_server(root)
"""

from mlflow_server.server import (
    ensure_server,
    find_running,
    is_healthy,
    network_exposure_warning,
    start_server,
    stop_server,
    wait_for_exit,
)
from mlflow_server.state import ServerError, ServerInfo, default_root

__all__ = [
    "ServerError",
    "ServerInfo",
    "default_root",
    "ensure_server",
    "find_running",
    "is_healthy",
    "network_exposure_warning",
    "start_server",
    "stop_server",
    "wait_for_exit",
]
