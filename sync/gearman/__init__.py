"""gearsync's asyncio Gearman protocol: client, worker, admin, and the pure protocol layer.

protocol.py has no I/O; connection.py is one TCP connection with deadlines; client.py submits jobs; worker.py
grabs and completes them; admin.py speaks the text admin protocol.
"""

from sync.gearman import admin
from sync.gearman.client import GearmanClient, Priority
from sync.gearman.connection import GearmanConnection
from sync.gearman.errors import (
    GearmanConnectionError,
    GearmanError,
    GearmanJobFailed,
    GearmanJobTimeoutError,
    GearmanProtocolError,
    GearmanServerError,
    GearmanTimeoutError,
    GearmanUnavailableError,
)
from sync.gearman.protocol import (
    FunctionStatus,
    JobInfo,
    Packet,
    PacketParser,
    PacketType,
    WorkerInfo,
    pack_request,
)
from sync.gearman.worker import GearmanWorker, GearmanWorkerConnection, Job

__all__ = [
    "FunctionStatus",
    "GearmanClient",
    "GearmanConnection",
    "GearmanConnectionError",
    "GearmanError",
    "GearmanJobFailed",
    "GearmanJobTimeoutError",
    "GearmanProtocolError",
    "GearmanServerError",
    "GearmanTimeoutError",
    "GearmanUnavailableError",
    "GearmanWorker",
    "GearmanWorkerConnection",
    "Job",
    "JobInfo",
    "Packet",
    "PacketParser",
    "PacketType",
    "Priority",
    "WorkerInfo",
    "admin",
    "pack_request",
]
