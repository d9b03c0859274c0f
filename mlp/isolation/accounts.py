"""One system account per hub user, created by the platform when it runs as root.

The account's name is a documented prefix plus a safe slug of the hub name (`account_name`):
names that are already safe (lowercase letters, digits, inner dashes, short enough) keep their
form, every other name gets a hash suffix, so two different hub names never map to the same
account. The platform records the accounts it created in `<data_dir>/accounts.json` (mode
0600); an existing system account that is not in that record is refused, never adopted.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlp.core.paths import user_home

DEFAULT_PREFIX = "mlp-"
MAX_ACCOUNT_NAME = 32  # useradd's limit on Linux
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9-]{0,15}$")
_SAFE_BODY_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_HASHED_RE = re.compile(r"-[0-9a-f]{8}$")
COMMENT = "mlp platform account"


class AccountError(RuntimeError):
    """An account cannot be created or used; the message says why and what to do."""


def check_prefix(prefix: str) -> str:
    if not _PREFIX_RE.match(prefix):
        raise ValueError(
            f"account prefix {prefix!r}: expected a lowercase letter, then up to 15 lowercase "
            "letters, digits or '-' (e.g. 'mlp-')"
        )
    return prefix


def account_name(hub_name: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The system account of a hub user: ``prefix + slug``, at most 32 characters.

    A hub name made only of lowercase letters, digits and inner single dashes that fits keeps
    its form (``alice`` -> ``mlp-alice``). Any other name (capitals, dots, unicode, too long,
    or one that itself ends like a hash suffix) becomes its cleaned form, shortened, plus
    ``-`` and 8 hex digits of its SHA-256 (``Ann.B`` -> ``mlp-ann-b-1f0e...``), so a safe
    name and an unsafe one can never produce the same account.
    """
    check_prefix(prefix)
    room = MAX_ACCOUNT_NAME - len(prefix)
    if _SAFE_BODY_RE.match(hub_name) and len(hub_name) <= room and not _HASHED_RE.search(hub_name):
        return prefix + hub_name
    body = re.sub(r"[^a-z0-9]+", "-", hub_name.lower()).strip("-")
    digest = hashlib.sha256(hub_name.encode("utf-8")).hexdigest()[:8]
    body = body[: room - 9].strip("-")
    return f"{prefix}{body}-{digest}" if body else f"{prefix}{digest}"


@dataclass(frozen=True)
class Account:
    hub_name: str
    name: str
    uid: int
    gid: int
    home: Path


class AccountManager:
    """Creates and looks up the platform's system accounts (root only)."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        prefix: str = DEFAULT_PREFIX,
        shell: str = "/bin/bash",
    ):
        self.data_dir = Path(data_dir)
        self.prefix = check_prefix(prefix)
        self.shell = shell
        self.registry_path = self.data_dir / "accounts.json"
        self._lock_path = self.data_dir / "accounts.lock"

    # ------------------------------------------------------------------ registry
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The hub (spawner) and the mlp service (jobs) both create accounts: one at a time."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.registry_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise AccountError(
                f"{self.registry_path} cannot be read ({e}); restore it from a backup: it "
                "records which system accounts the platform created"
            ) from None
        return dict(data.get("accounts", {}))

    def _write(self, accounts: dict[str, dict[str, object]]) -> None:
        tmp = self.registry_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"accounts": accounts}, f, indent=1, sort_keys=True)
        os.replace(tmp, self.registry_path)

    # ------------------------------------------------------------------ lookups
    def registered(self) -> dict[str, int]:
        """Hub user name -> uid of every account the platform created (from its registry)."""
        return {hub: int(str(e["uid"])) for hub, e in self._read().items()}

    def lookup(self, hub_name: str) -> Account | None:
        """The account the platform created for `hub_name`, or None if it has none yet."""
        entry = self._read().get(hub_name)
        if entry is None:
            return None
        return self._verify(hub_name, str(entry["account"]), int(str(entry["uid"])))

    def _verify(self, hub_name: str, name: str, uid: int) -> Account:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise AccountError(
                f"system account {name} of hub user {hub_name!r} was deleted outside the "
                f"platform; remove {hub_name!r} from {self.registry_path} to create it again"
            ) from None
        if pw.pw_uid != uid:
            raise AccountError(
                f"system account {name} now has uid {pw.pw_uid}, not the uid {uid} the platform "
                f"created it with; refusing to run {hub_name!r}'s processes as it"
            )
        return Account(hub_name, name, pw.pw_uid, pw.pw_gid, user_home(self.data_dir, hub_name))

    # ------------------------------------------------------------------ creation
    def ensure(self, hub_name: str) -> Account:
        """The hub user's account, created with its home folder on first use."""
        if os.geteuid() != 0:
            raise AccountError("creating system accounts needs root; run the platform as root")
        if not hub_name or "\x00" in hub_name or "/" in hub_name:
            raise AccountError(f"hub user name {hub_name!r} cannot be mapped to an account")
        name = account_name(hub_name, self.prefix)
        with self._locked():
            accounts = self._read()
            entry = accounts.get(hub_name)
            if entry is not None:
                account = self._verify(hub_name, str(entry["account"]), int(str(entry["uid"])))
                self._prepare_home(account, fresh=False)
                return account
            owner = next((h for h, e in accounts.items() if e["account"] == name), None)
            if owner is not None:
                raise AccountError(
                    f"hub users {owner!r} and {hub_name!r} map to the same system account "
                    f"{name}; rename one of them"
                )
            try:
                pwd.getpwnam(name)
            except KeyError:
                pass
            else:
                raise AccountError(
                    f"system account {name} already exists and was not created by the platform; "
                    f"refusing to adopt it for hub user {hub_name!r}. Remove or rename that "
                    f"account, or choose another c.MLPAccounts prefix than {self.prefix!r}"
                )
            home = user_home(self.data_dir, hub_name)
            self._useradd(name, home)
            pw = pwd.getpwnam(name)
            account = Account(hub_name, name, pw.pw_uid, pw.pw_gid, home)
            accounts[hub_name] = {"account": name, "uid": pw.pw_uid}
            self._write(accounts)
            self._prepare_home(account, fresh=True)
            return account

    def _useradd(self, name: str, home: Path) -> None:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        cmd = [
            useradd,
            "--no-create-home",
            "--home-dir",
            str(home),
            "--shell",
            self.shell,
            "--comment",
            COMMENT,
            "--user-group",
            "--no-log-init",
            name,
        ]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise AccountError(
                f"useradd {name} failed: {e}; install the passwd package (useradd)"
            ) from None
        if out.returncode != 0:
            raise AccountError(
                f"useradd {name} failed with exit code {out.returncode}: "
                f"{(out.stderr or out.stdout).strip()}"
            )

    def _prepare_home(self, account: Account, fresh: bool) -> None:
        """Home folder owned by the account, mode 0700; files a former single-account run left
        there are handed over when the account is created."""
        users = self.data_dir / "users"
        users.mkdir(parents=True, exist_ok=True)
        os.chmod(users, 0o711)  # traverse only: nobody lists who has a folder
        home = account.home
        home.mkdir(exist_ok=True)
        if fresh:
            for root, dirs, files in os.walk(home):
                for entry in (*dirs, *files):
                    os.lchown(os.path.join(root, entry), account.uid, account.gid)
        os.chown(home, account.uid, account.gid)
        os.chmod(home, 0o700)

    def delete(self, hub_name: str) -> None:
        """Remove a platform-created account (its files stay in the data directory)."""
        with self._locked():
            accounts = self._read()
            entry = accounts.pop(hub_name, None)
            if entry is None:
                return
            userdel = shutil.which("userdel") or "/usr/sbin/userdel"
            subprocess.run([userdel, str(entry["account"])], capture_output=True, check=False)
            with contextlib.suppress(KeyError):
                grp.getgrnam(str(entry["account"]))
                groupdel = shutil.which("groupdel") or "/usr/sbin/groupdel"
                subprocess.run([groupdel, str(entry["account"])], capture_output=True, check=False)
            self._write(accounts)


def drop_privileges(account: Account) -> None:
    """In a child process before exec: become the account (groups, gid, then uid)."""
    os.setgroups([account.gid])
    os.setgid(account.gid)
    os.setuid(account.uid)
