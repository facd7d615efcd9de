"""MLflow's basic-auth app for a tracking server: credentials, the local server's settings and login checks.

Credentials come only from MLflow's client variables ``MLFLOW_TRACKING_USERNAME`` and
``MLFLOW_TRACKING_PASSWORD``. A local server started with them creates that user as its
admin. Its auth config file in the server root names the admin and the auth database, but
never contains the password. The server process gets it through ``MLFLOW_AUTH_ADMIN_PASSWORD``,
which mlflow 3.17 uses only to create the admin user or to replace its legacy default password.
"""

from __future__ import annotations

import configparser
import io
import os
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
import requests

from mlflow_server.state import ServerError

# The variables MLflow's REST client reads for HTTP basic auth (mlflow.environment_variables).
USERNAME_VARIABLE = "MLFLOW_TRACKING_USERNAME"
PASSWORD_VARIABLE = "MLFLOW_TRACKING_PASSWORD"

AUTH_CONFIG_FILE_NAME = "basic_auth.ini"
AUTH_DATABASE_FILE_NAME = "basic_auth.db"
# mlflow 3.17 rejects a shorter password for the admin user it creates (mlflow.utils.validation._validate_password).
MIN_ADMIN_PASSWORD_LENGTH = 12
# Users without an explicit grant get no access, and the admin gets full access.
DEFAULT_PERMISSION = "NO_PERMISSIONS"
AUTHORIZATION_FUNCTION = "mlflow.server.auth:authenticate_request_basic_auth"

# An API route that both apps serve: without auth it returns 200, with auth it returns 401 to
# a request without valid credentials. /health stays open under the basic-auth app.
_PROBE_PATH = "/api/2.0/mlflow/experiments/search?max_results=1"
_PROBE_TIMEOUT_S = 10.0


class CredentialsError(ServerError):
    """Basic-auth credentials that are missing from the environment, malformed, or rejected by the server."""


@dataclass(frozen=True)
class BasicAuthCredentials:
    """A user name and password for MLflow's basic-auth app; the password is left out of ``repr``."""

    username: str
    password: str = field(repr=False)


def credentials_from_environment(environment: Mapping[str, str] | None = None) -> BasicAuthCredentials:
    """Read the credentials from ``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD``.

    Raises CredentialsError naming the variables that are unset or empty, or a user name
    that HTTP basic auth cannot carry.
    """
    environment = os.environ if environment is None else environment
    missing = [name for name in (USERNAME_VARIABLE, PASSWORD_VARIABLE) if not environment.get(name)]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise CredentialsError(
            f"{' and '.join(missing)} {verb} not set or empty; export {USERNAME_VARIABLE} and "
            f"{PASSWORD_VARIABLE} with the MLflow user name and password"
        )

    username = environment[USERNAME_VARIABLE]
    if ":" in username or not username.isprintable():
        raise CredentialsError(
            f"{USERNAME_VARIABLE} is {username!r}, but a basic-auth user name cannot contain ':' or "
            "control characters; choose another user name"
        )
    return BasicAuthCredentials(username, environment[PASSWORD_VARIABLE])


def check_admin_password(credentials: BasicAuthCredentials) -> None:
    """Raise CredentialsError when the password is too short for the admin user a new server creates."""
    if len(credentials.password) < MIN_ADMIN_PASSWORD_LENGTH:
        raise CredentialsError(
            f"{PASSWORD_VARIABLE} has {len(credentials.password)} characters, but MLflow's basic-auth app "
            f"needs at least {MIN_ADMIN_PASSWORD_LENGTH} for the admin user it creates; choose a longer password"
        )


def write_auth_config(root: Path, credentials: BasicAuthCredentials) -> Path:
    """Write the auth app's config file into ``root`` with mode 0600 and return its path.

    The auth database ``basic_auth.db`` is created empty with mode 0600 first, so the
    password hashes that the server stores there are readable only by this user.
    """
    database = root / AUTH_DATABASE_FILE_NAME
    if not database.exists():
        os.close(os.open(database, os.O_CREAT | os.O_WRONLY, 0o600))

    config = configparser.RawConfigParser()
    config["mlflow"] = {
        "default_permission": DEFAULT_PERMISSION,
        "database_uri": f"sqlite:///{database}",
        # mlflow reads the file with interpolation on, so a literal % must be doubled.
        "admin_username": credentials.username.replace("%", "%%"),
        "authorization_function": AUTHORIZATION_FUNCTION,
    }
    text = io.StringIO()
    config.write(text)

    path = root / AUTH_CONFIG_FILE_NAME
    # mkstemp creates the file with mode 0600, and the rename keeps that mode.
    descriptor, temporary_name = tempfile.mkstemp(dir=root, prefix=f".{AUTH_CONFIG_FILE_NAME}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            stream.write(text.getvalue())
        os.replace(temporary_name, path)
    except BaseException:
        Path(temporary_name).unlink(missing_ok=True)
        raise
    return path


def auth_server_environment(root: Path, credentials: BasicAuthCredentials) -> dict[str, str]:
    """Return the variables that switch on the auth app for a server in ``root``, with ``credentials`` as admin.

    The admin variables override any the caller has set, because mlflow prefers them to
    the config file. A caller's ``MLFLOW_FLASK_SERVER_SECRET_KEY`` is kept; otherwise a
    random one signs the auth app's CSRF tokens for this server's lifetime.
    """
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(write_auth_config(root, credentials)),
        "MLFLOW_AUTH_ADMIN_USERNAME": credentials.username,
        "MLFLOW_AUTH_ADMIN_PASSWORD": credentials.password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_hex(32),
    }


def requires_login(uri: str) -> bool:
    """Tell whether the server at ``uri`` returns 401 to an API request without credentials.

    Raises ServerError when the server returns neither 200 nor 401, or does not respond.
    """
    status = _probe(uri, None)
    if status not in (200, 401):
        raise ServerError(
            f"MLflow server at {uri} returned HTTP {status} to {_PROBE_PATH}; check that the URI points "
            "to an MLflow tracking server"
        )
    return status == 401


def check_credentials(uri: str, credentials: BasicAuthCredentials) -> None:
    """Raise CredentialsError unless the server at ``uri`` accepts ``credentials``."""
    status = _probe(uri, credentials)
    if status == 200:
        return
    if status == 401:
        raise CredentialsError(
            f"MLflow server at {uri} rejected user {credentials.username!r} from {USERNAME_VARIABLE} "
            f"(HTTP 401); set {PASSWORD_VARIABLE} to that user's password. A local server keeps the admin "
            "password of its first start"
        )
    raise CredentialsError(
        f"MLflow server at {uri} returned HTTP {status} to user {credentials.username!r} for {_PROBE_PATH}; "
        "check the user's permissions"
    )


def _probe(uri: str, credentials: BasicAuthCredentials | None) -> int:
    with requests.Session() as session:
        # Environment proxies would route a loopback request through another host.
        session.trust_env = False
        if credentials is not None:
            session.auth = (credentials.username, credentials.password)
        try:
            response = session.get(f"{uri.rstrip('/')}{_PROBE_PATH}", timeout=_PROBE_TIMEOUT_S)
        except requests.RequestException as error:
            raise ServerError(
                f"MLflow server at {uri} did not respond to {_PROBE_PATH}: {type(error).__name__}; "
                "check that it is running"
            ) from None
    return response.status_code
