from typing_extensions import Buffer

SPLIT_OK: int
SPLIT_TOO_LONG: int
SPLIT_BAD_CRC: int

def split_frames(buffer: Buffer, start: int, limit: int, out: list[bytes]) -> tuple[int, int, int, int]: ...
def native_wire_vocabulary() -> dict[str, object]: ...
