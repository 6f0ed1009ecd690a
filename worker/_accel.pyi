from typing import TypeVar

_T = TypeVar("_T")

def split_frame(frame: bytes, /) -> list[bytes]: ...
def coalesce(packets: list[bytes], /) -> list[bytes]: ...
def cstp_data_frames(packets: list[bytes], /) -> list[bytes]: ...
def cstp_data_pairs(
    buf: bytes | bytearray, start: int, data_type: _T, /
) -> tuple[list[tuple[_T, bytes]], int]: ...
def split_mmsg(
    msgs: memoryview,
    data: memoryview,
    control: memoryview,
    count: int,
    slot: int,
    cmsg_space: int,
    /,
) -> tuple[list[bytes], int]: ...

class Gcm:
    def __init__(self, key: bytes, salt: bytes) -> None: ...
    def seal_records(
        self,
        first_seq64: int,
        ctype: int,
        version: int,
        plaintexts: list[bytes],
        prefix: bytes = b"",
        /,
    ) -> list[bytes]: ...
    def open(self, seq64: int, ctype: int, version: int, body: bytes, /) -> bytes | None: ...
    def open_datagrams(
        self,
        datagrams: list[bytes],
        start: int,
        epoch: int,
        top: int,
        bits: int,
        out: list[bytes],
        split: int = -1,
        others: list[bytes] | None = None,
        /,
    ) -> tuple[int, int, int, int, int, int]: ...

class TlsRecords:
    def __init__(
        self,
        owner: object,
        ssl: int,
        from_bio: int,
        ssl_read: int,
        ssl_write: int,
        ssl_get_error: int,
        bio_read: int,
    ) -> None: ...
    def write_records(
        self, records: list[bytes], out: bytearray, limit: int, /
    ) -> tuple[int, int]: ...
    def read(self, limit: int, /) -> tuple[bytes, int]: ...
