"""One tray app per user: a second launch asks the first to show its window, then exits."""

from __future__ import annotations

import getpass
import hashlib
import sys
from pathlib import Path

import structlog
from PySide6.QtCore import QLockFile, QObject, QStandardPaths, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket

log = structlog.get_logger("remotellm.tray")

MESSAGE = b"show\n"


def server_name(user: str | None = None) -> str:
    """A per-user socket name (hashed: user names may hold characters sockets dislike)."""
    who = user or getpass.getuser()
    return "remotellm-connector-" + hashlib.sha256(who.encode()).hexdigest()[:16]


def runtime_dir() -> Path:
    """The user's private runtime directory (XDG_RUNTIME_DIR on Linux), for the lock file."""
    location = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.RuntimeLocation)
    return Path(location) if location else Path.home()


def default_name(private: Path) -> str:
    """The socket inside the user's private runtime directory, where no other user can put
    one first; a bare name (Qt's temp directory) on Windows or when the path is too long."""
    path = private / server_name()
    if sys.platform == "win32" or len(str(path).encode()) > 100:  # sun_path holds 104 bytes
        return server_name()
    return str(path)


class SingleInstance(QObject):
    """Owns the per-user lock and local socket of the running tray app.

    The lock file (in the user's runtime directory, which only the user can write) decides who
    is first, without a race between two launches; the socket only carries "show yourself".
    """

    activated = Signal()
    """A second launch asked this instance to come forward."""

    def __init__(
        self,
        name: str | None = None,
        parent: QObject | None = None,
        *,
        directory: Path | None = None,
    ) -> None:
        super().__init__(parent)
        private = directory or runtime_dir()
        self.name = name or default_name(private)
        self.lock = QLockFile(str(private / f"{Path(self.name).name}.lock"))
        self.lock.setStaleLockTime(0)  # a lock is stale only when its process is gone
        self.server: QLocalServer | None = None

    def acquire(self, timeout_ms: int = 1000) -> bool:
        """True if this is the first instance; otherwise tells the first one and returns False."""
        if not self.lock.tryLock(0):
            self._tell_first(timeout_ms)
            return False
        # We hold the lock, so a socket file that is still there was left by a crash.
        QLocalServer.removeServer(self.name)
        server = QLocalServer(self)
        server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        if not server.listen(self.name):
            # Still the only instance (the lock says so); a second launch just cannot
            # bring this one forward.
            log.warning("cannot listen for a second launch", error=server.errorString())
            return True
        server.newConnection.connect(self._on_connection)
        self.server = server
        return True

    def _tell_first(self, timeout_ms: int) -> None:
        socket = QLocalSocket()
        socket.connectToServer(self.name)
        if socket.waitForConnected(timeout_ms):
            socket.write(MESSAGE)
            socket.waitForBytesWritten(timeout_ms)
            socket.disconnectFromServer()

    def _on_connection(self) -> None:
        assert self.server is not None
        while (socket := self.server.nextPendingConnection()) is not None:
            # The socket is the server's child; Qt frees it with the server.
            socket.readyRead.connect(self._read)

    def _read(self) -> None:
        socket = self.sender()
        if not isinstance(socket, QLocalSocket):
            return
        if bytes(socket.readAll().data()).startswith(MESSAGE.strip()):
            self.activated.emit()
        socket.abort()

    def release(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.lock.isLocked():
            self.lock.unlock()
