# Declarations of csrc/peer_message.h for cimport (constants only).

cdef extern from "peer_message.h" nogil:
    enum:
        ESC_MESSAGE_VERSION
        ESC_MESSAGE_HEAD_BYTES
        ESC_MESSAGE_ENTRY_ROW_BYTES
        ESC_MESSAGE_ENTRIES_MAX
        ESC_MESSAGE_FLAG_REJECT
        ESC_MESSAGE_AT_ENTRIES
        ESC_MESSAGE_AT_CONTEXT_LEN
        ESC_MESSAGE_AT_DATA_LEN
        ESC_MESSAGE_APPEND
        ESC_MESSAGE_APPEND_RESPONSE
        ESC_MESSAGE_HEARTBEAT_RESPONSE
        ESC_MESSAGE_SNAPSHOT_RESPONSE
        ESC_MESSAGE_TYPE_MAX
