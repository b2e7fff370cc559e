# Declarations of csrc/state_commands.h for cimport (constants only).

cdef extern from "state_commands.h" nogil:
    enum:
        ESC_COMMAND_SET_EVENT
        ESC_COMMAND_DEDUP_ADD
        ESC_COMMAND_DEDUP_EXPIRE
        ESC_COMMAND_CONFIG_UPDATE
        ESC_COMMAND_SET_EVENT_AT
        ESC_COMMAND_MEMBERSHIP
        ESC_SET_EVENT_AT_HEAD_BYTES
