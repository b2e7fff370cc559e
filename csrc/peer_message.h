/*
 * The fixed head of a Raft message between peers, one message per frame body. The format
 * belongs to eventstream/transport/peer_codec.py (the full layout is in its docstring);
 * tests/unit/test_wire_vocabulary.py holds these values equal to its constants.
 */
#ifndef ESC_PEER_MESSAGE_H
#define ESC_PEER_MESSAGE_H

#define ESC_MESSAGE_VERSION 1u
#define ESC_MESSAGE_HEAD_BYTES 88u
#define ESC_MESSAGE_ENTRY_ROW_BYTES 12u /* per entry: u64 term, u32 data length */
#define ESC_MESSAGE_ENTRIES_MAX (1u << 20)
#define ESC_MESSAGE_FLAG_REJECT 1u
/* The flags byte's bits from here up count the learners at the end of the member id list. */
#define ESC_MESSAGE_LEARNERS_SHIFT 2u

/* Byte offsets in the head. */
#define ESC_MESSAGE_AT_VERSION 0
#define ESC_MESSAGE_AT_TYPE 1
#define ESC_MESSAGE_AT_FLAGS 2
#define ESC_MESSAGE_AT_VOTERS 3
#define ESC_MESSAGE_AT_TO 4
#define ESC_MESSAGE_AT_SENDER 12
#define ESC_MESSAGE_AT_TERM 20
#define ESC_MESSAGE_AT_INDEX 28
#define ESC_MESSAGE_AT_LOG_TERM 36
#define ESC_MESSAGE_AT_COMMIT 44
#define ESC_MESSAGE_AT_HINT_INDEX 52
#define ESC_MESSAGE_AT_READ_SEQ 60
#define ESC_MESSAGE_AT_OFFSET 68
#define ESC_MESSAGE_AT_ENTRIES 76
#define ESC_MESSAGE_AT_CONTEXT_LEN 80
#define ESC_MESSAGE_AT_DATA_LEN 84

/* The message types native code sends or reads (eventstream/raft/messages.py MessageType). */
#define ESC_MESSAGE_APPEND 1u
#define ESC_MESSAGE_APPEND_RESPONSE 2u
#define ESC_MESSAGE_HEARTBEAT_RESPONSE 8u
#define ESC_MESSAGE_SNAPSHOT_RESPONSE 10u
#define ESC_MESSAGE_TYPE_MAX 15u /* TERM_QUERY_RESPONSE */

#endif /* ESC_PEER_MESSAGE_H */
