"""One tray app per user: a second launch asks the first to show its window, then exits."""

from __future__ import annotations

import getpass
import hashlib

from PySide6.QtCore import QObject, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket

MESSAGE = b"show\n"


def server_name(user: str | None = None) -> str:
    """A per-user socket name (hashed: user names may hold characters sockets dislike)."""
    who = user or getpass.getuser()
    return "remotellm-connector-" + hashlib.sha256(who.encode()).hexdigest()[:16]


class SingleInstance(QObject):
    """Owns the per-user local socket of the running tray app."""

    activated = Signal()
    """A second launch asked this instance to come forward."""

    def __init__(self, name: str | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name or server_name()
        self.server: QLocalServer | None = None

    def acquire(self, timeout_ms: int = 1000) -> bool:
        """True if this is the first instance; otherwise tells the first one and returns False."""
        socket = QLocalSocket()
        socket.connectToServer(self.name)
        if socket.waitForConnected(timeout_ms):
            socket.write(MESSAGE)
            socket.waitForBytesWritten(timeout_ms)
            socket.disconnectFromServer()
            return False
        # Nobody answers: a socket file left by a crashed instance is removed first.
        QLocalServer.removeServer(self.name)
        server = QLocalServer(self)
        server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        if not server.listen(self.name):
            raise RuntimeError(f"cannot listen on {self.name}: {server.errorString()}")
        server.newConnection.connect(self._on_connection)
        self.server = server
        return True

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
