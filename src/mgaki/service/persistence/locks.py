"""The service's cross-process lock is the event layer's (``mgaki.events.locks``): surveillance, below the
service, locks its result folder with the same class."""

from mgaki.events.locks import FileLock

__all__ = ["FileLock"]
