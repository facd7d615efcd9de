"""The Ray Tune trainable for sweeps with ``tracking.auth: basic``: the trial with MLflow credentials set first.

The driver passes the credentials through Ray's object store (``tune.with_parameters``),
like the data. Ray's runtime environment would also reach every worker, but Ray 2.60's
runtime-env agent logs its variables in clear text under the Ray session folder. The
trial's ``MlflowClient`` reads ``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD``
from its process environment on every request.
"""

from __future__ import annotations

import os
from typing import Any

from mlflow_server.auth import PASSWORD_VARIABLE, USERNAME_VARIABLE, BasicAuthCredentials
from trainables import trial


def run_trial(config: dict[str, Any], *, credentials: BasicAuthCredentials | None, **trial_arguments: Any) -> None:
    """Set the MLflow credentials in this process's environment, then run :func:`trainables.trial.run_trial`.

    The name matches the wrapped trainable, because Tune names trial folders after it.
    Without ``credentials`` the environment is left as it is.
    """
    if credentials is not None:
        os.environ[USERNAME_VARIABLE] = credentials.username
        os.environ[PASSWORD_VARIABLE] = credentials.password
    trial.run_trial(config, **trial_arguments)
