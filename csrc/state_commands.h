/*
 * State-machine command codes: the first byte of every Raft entry's data. The format belongs to
 * eventstream/state/commands.py; tests/unit/test_wire_vocabulary.py holds these values equal.
 */
#ifndef ESC_STATE_COMMANDS_H
#define ESC_STATE_COMMANDS_H

#define ESC_COMMAND_SET_EVENT 1
#define ESC_COMMAND_DEDUP_ADD 2
#define ESC_COMMAND_DEDUP_EXPIRE 3
#define ESC_COMMAND_CONFIG_UPDATE 4
#define ESC_COMMAND_SET_EVENT_AT 5
/* A membership entry of the consensus core (eventstream/raft/membership.py); applies as a no-op. */
#define ESC_COMMAND_MEMBERSHIP 6
/* SET_EVENT_AT: u8 command, i64 first-seen time in microseconds (the leader's clock at
 * proposal), then a batch_codec.h batch. */
#define ESC_SET_EVENT_AT_HEAD_BYTES 9

#endif /* ESC_STATE_COMMANDS_H */
