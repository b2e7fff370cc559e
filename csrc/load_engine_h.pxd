# Declarations of csrc/load_engine.h for cimport; link with
# `# distutils: sources = csrc/load_engine.c csrc/crc32c.c`.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "load_engine.h" nogil:
    enum:
        ESC_LOAD_EVENT_ID_BYTES
        ESC_LOAD_TALLY_EXACT_US
        ESC_LOAD_SLOTS_MAX
        ESC_LOAD_OK
        ESC_LOAD_NOT_LEADER
        ESC_LOAD_OUTCOME_COUNT
        ESC_LOAD_BAD_FRAME
        ESC_LOAD_BAD_ANSWER
        ESC_LOAD_RUN_UNTIL
        ESC_LOAD_RUN_DONE
        ESC_LOAD_RUN_LOOKUP
        ESC_LOAD_RUN_SYSTEM_ERROR

    ctypedef struct esc_load_answer_t:
        int outcome
        uint32_t duplicates
        uint64_t leader_id
        const uint8_t *message
        size_t message_len

    ctypedef struct esc_load_tally_t:
        uint32_t *exact
        int64_t *over
        size_t over_len
        uint32_t lo
        uint32_t hi
        uint64_t clamped

    ctypedef struct esc_load_engine_t:
        pass

    ctypedef struct esc_load_config_t:
        uint32_t slots
        uint32_t batch_size
        const uint8_t *payload
        uint32_t payload_len
        uint64_t keys
        uint64_t key_first
        int with_ids
        int64_t timeout_ns
        int64_t backoff_initial_ns
        int64_t backoff_max_ns

    ctypedef struct esc_load_figures_t:
        uint64_t events
        uint64_t requests
        uint64_t duplicates
        uint64_t events_acked
        uint64_t interval_events
        uint64_t interval_errors
        uint64_t errors[ESC_LOAD_OUTCOME_COUNT]
        uint64_t connects
        int64_t last_answer_ns
        esc_load_tally_t warmup
        esc_load_tally_t counted

    size_t esc_load_request_bytes_max(uint32_t batch_size, uint32_t payload_len, uint64_t keys)
    size_t esc_load_encode_request(uint8_t *dst, uint64_t request_id, uint32_t batch_size,
                                   const uint8_t *ids, uint64_t key_first, uint64_t keys,
                                   const uint8_t *payload, uint32_t payload_len, int64_t timestamp_us)
    int esc_load_parse_answer(const uint8_t *body, size_t length, uint64_t request_id,
                              uint32_t batch_size, esc_load_answer_t *answer)
    esc_load_engine_t *esc_load_engine_new(const esc_load_config_t *config)
    void esc_load_engine_free(esc_load_engine_t *engine)
    int esc_load_set_target(esc_load_engine_t *engine, const char *ip, uint16_t port)
    int esc_load_set_tls(esc_load_engine_t *engine, const char *ca_file, char *err, size_t err_bytes)
    int esc_load_set_token(esc_load_engine_t *engine, const uint8_t *token, size_t token_len)
    const char *esc_load_tls_error(const esc_load_engine_t *engine)
    void esc_load_set_schedule(esc_load_engine_t *engine, int64_t warmup_end_ns, int64_t deadline_ns,
                               int64_t appends_left)
    int esc_load_run(esc_load_engine_t *engine, int64_t until_ns)
    size_t esc_load_take_hint(esc_load_engine_t *engine, const char **hint)
    esc_load_figures_t *esc_load_figures(esc_load_engine_t *engine)
    void esc_load_tally_clear(esc_load_tally_t *tally)
    int64_t esc_load_monotonic_ns()
