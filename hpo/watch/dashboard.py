"""``hpo dashboard``: optuna-dashboard served on the study's storage."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpo.errors import UsageError

if TYPE_CHECKING:
    from hpo.config.settings import Settings

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def forward_line(port: int, user: str, host: str) -> str:
    """The ssh command a laptop runs to reach a dashboard bound to 127.0.0.1 here."""
    return f"ssh -N -L {port}:127.0.0.1:{port} {user}@{host}"


def serve(settings: "Settings", bind: str, port: int) -> None:
    """Serve until Ctrl-C. Raises UsageError when ``bind:port`` cannot be listened on."""
    from optuna_dashboard import run_server

    from hpo.study.storage import open_storage

    try:
        # The workers' storage and lock: the dashboard may write (notes), like a worker.
        run_server(open_storage(settings.spec), host=bind, port=port)
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise UsageError(f"--port {port} / --host {bind}: cannot listen: {exc}") from None
