"""Per-user passwords: jupyterhub-nativeauthenticator, with the admin accounts created at the
hub's first start (so nobody can sign up under an admin's name before the admin does)."""

from __future__ import annotations

from typing import Any

from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.handlers import LoginHandler as NativeLoginHandler
from traitlets import Unicode


class _NoTimer:
    """JupyterHub 6 removed the handlers' `statsd` client that nativeauthenticator 1.3.0 still
    times logins with; logins are not timed here."""

    def timer(self, name: str) -> _NoTimer:
        return self

    def start(self) -> _NoTimer:
        return self

    def stop(self, send: bool = True) -> None:
        pass


class MLPLoginHandler(NativeLoginHandler):
    statsd = _NoTimer()

    def _render(self, login_error: Any = None, username: Any = None, **_: Any) -> Any:
        # JupyterHub 6 renders a failed POST's error page through _render(**namespace).
        return super()._render(login_error=login_error, username=username)


class MLPNativeAuthenticator(NativeAuthenticator):
    initial_admin_password = Unicode(
        config=True,
        help="""Password given to every name in Authenticator.admin_users that has no account
        yet, at hub start. hub_config generates it at first start (kept mode 0600 in
        <data_dir>/secrets.json) and prints it once. Admins change it at /hub/change-password.""",
    )

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        for name in sorted(self.admin_users):
            if self.user_exists(name):
                continue
            if not self.initial_admin_password:
                raise ValueError(
                    f"admin {name!r} has no account and MLPNativeAuthenticator."
                    "initial_admin_password is not set: anybody could sign up as that admin. "
                    "Set the password (hub_config does) or remove the name from admin_users"
                )
            if self.create_user(name, self.initial_admin_password) is None:
                raise ValueError(
                    f"cannot create the admin account {name!r}: the initial admin password is "
                    f"refused (shorter than {self.minimum_password_length} characters or too "
                    "common), or sign-up is disabled"
                )
            self.log.info("created the admin account %s", name)

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        return [
            (path, MLPLoginHandler if handler is NativeLoginHandler else handler)
            for path, handler in super().get_handlers(app)
        ]
