/*
 * The client protocol in C: op and status codes, head sizes and the APPEND answer layout.
 * eventstream/transport/client_protocol.py owns the format; tests/unit/test_wire_vocabulary.py
 * holds these values equal to its constants. Each request and answer is one frame body
 * (frame_format.h); integers are little-endian.
 *
 *   request   u8 op, u64 request id, then the op's body (APPEND: a batch_codec.h batch)
 *   answer    u8 status, u64 request id, then the status's body
 *   APPEND OK u64 raft index, u32 n, n x u32 queue, n x u64 offset, n x u8 duplicate
 *   error     u64 leader hint (0: unknown), then the UTF-8 message
 */
#ifndef ESC_CLIENT_PROTOCOL_H
#define ESC_CLIENT_PROTOCOL_H

#define ESC_CLIENT_OP_APPEND 1
#define ESC_CLIENT_OP_READ 2
#define ESC_CLIENT_OP_CONFIG_UPDATE 3
#define ESC_CLIENT_OP_CONFIG_GET 4
#define ESC_CLIENT_OP_STATUS 5
#define ESC_CLIENT_OP_SNAPSHOT 6
#define ESC_CLIENT_OP_MEMBERS 7
#define ESC_CLIENT_OP_MEMBER_CHANGE 8
#define ESC_CLIENT_OP_AUTH 9

#define ESC_CLIENT_STATUS_OK 0
#define ESC_CLIENT_STATUS_NOT_LEADER 1
#define ESC_CLIENT_STATUS_TIMEOUT 2
#define ESC_CLIENT_STATUS_UNAVAILABLE 3
#define ESC_CLIENT_STATUS_INVALID_ARGUMENT 4
#define ESC_CLIENT_STATUS_OVERLOADED 5
#define ESC_CLIENT_STATUS_OUT_OF_RANGE 6
#define ESC_CLIENT_STATUS_INTERNAL 7
#define ESC_CLIENT_STATUS_REFUSED 8
#define ESC_CLIENT_STATUS_UNAUTHENTICATED 9
#define ESC_CLIENT_STATUS_PERMISSION_DENIED 10
#define ESC_CLIENT_STATUS_LAST ESC_CLIENT_STATUS_PERMISSION_DENIED

#define ESC_CLIENT_REQUEST_HEAD_BYTES 9
#define ESC_CLIENT_ANSWER_HEAD_BYTES 9
#define ESC_CLIENT_APPEND_OK_FIXED_BYTES 12 /* u64 raft index, u32 n */
#define ESC_CLIENT_APPEND_OK_ROW_BYTES 13   /* u32 queue, u64 offset, u8 duplicate */
#define ESC_CLIENT_ERROR_FIXED_BYTES 8      /* u64 leader hint */

/* The hello that opens every connection (eventstream/transport/hello.py): "ESC\x01", u8 role,
 * u64 sender id, u64 target id; a client sends role CLIENT and two zero ids. */
#define ESC_HELLO_MAGIC "ESC\x01"
#define ESC_HELLO_MAGIC_BYTES 4
#define ESC_HELLO_BYTES 21
#define ESC_HELLO_ROLE_PEER 1
#define ESC_HELLO_ROLE_CLIENT 2
#define ESC_HELLO_ROLE_REPLICATION 3

#endif /* ESC_CLIENT_PROTOCOL_H */
