/*
 * IoT Connect Center plugin ABI.
 *
 * The only contract between the kernel (`iotc`) and a plugin (a shared library). Rules that keep old
 * plugins loading as the ABI grows:
 *   - negotiation first: the kernel calls iotc_plugin_entry() with the ABI versions it speaks and the
 *     plugin answers with a descriptor naming the one version it chose (or the one it wants);
 *   - every struct starts with its own size (`struct_size`) and ends with reserved fields; a reader never
 *     touches a field that lies beyond the size the writer declared;
 *   - enumerations are plain uint32_t values with #defines and only ever grow;
 *   - no Swift, C++ or other language type ever crosses the boundary: strings are (pointer, length) pairs
 *     in UTF-8, buffers are (pointer, length) pairs, and everything else is a C scalar;
 *   - pointers passed into a call are valid only for that call unless stated otherwise: copy what you keep.
 *
 * A plugin exports exactly one symbol, iotc_plugin_entry, and should be linked with a version script that
 * keeps every other symbol local (iotc_plugin.map beside this header).
 */
#ifndef IOTC_PLUGIN_H
#define IOTC_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ABI versions. Version 1 is the first; the kernel offers every version it can serve. */
#define IOTC_ABI_VERSION_1 1u
#define IOTC_ABI_VERSION_CURRENT IOTC_ABI_VERSION_1

/* A UTF-8 string that need not be NUL-terminated. ptr may be NULL when len is 0. */
typedef struct iotc_str {
    const char *ptr;
    size_t len;
} iotc_str;

/* A byte buffer. */
typedef struct iotc_bytes {
    const uint8_t *ptr;
    size_t len;
} iotc_bytes;

/* A key/value pair (message properties and metadata, metric labels). */
typedef struct iotc_kv {
    iotc_str key;
    iotc_str value;
} iotc_kv;

/* ---- Messages ------------------------------------------------------------------------------------ */

/* Message kinds. */
#define IOTC_KIND_TELEMETRY 0u
#define IOTC_KIND_ATTRIBUTES 1u
#define IOTC_KIND_EVENT 2u
#define IOTC_KIND_COMMAND 3u
#define IOTC_KIND_COMMAND_RESULT 4u
#define IOTC_KIND_LIFECYCLE 5u
#define IOTC_KIND_FIRMWARE_STATUS 6u

/* Timestamps are milliseconds since the Unix epoch; this value means "unknown". */
static const int64_t IOTC_TIME_UNKNOWN = INT64_MIN;

/* The canonical message envelope: one form for every protocol. */
typedef struct iotc_message {
    uint32_t struct_size;     /* sizeof(iotc_message) as the writer knew it */
    uint32_t kind;            /* IOTC_KIND_* */
    iotc_str id;              /* message id, unique per hub; empty when a source submits */
    iotc_str tenant;          /* empty: the kernel fills in the authenticated tenant or "default" */
    iotc_str device;          /* device id */
    iotc_str topic;           /* canonical topic, '/'-separated, e.g. "devices/sensor-1/telemetry" */
    iotc_str content_type;    /* MIME type of the payload, e.g. "application/json" */
    iotc_bytes payload;
    int64_t device_time_ms;   /* time the device stamped, or IOTC_TIME_UNKNOWN */
    int64_t received_time_ms; /* time the hub received it, or IOTC_TIME_UNKNOWN (the kernel fills it) */
    uint32_t qos;             /* 0: at most once, 1: at least once (MQTT QoS, CoAP confirmable) */
    uint32_t flags;           /* reserved, 0 */
    /* Protocol properties that must survive translation, with namespaced keys, e.g. "mqtt.user.site",
     * "mqtt.response_topic", "coap.observe", "http.header.x-request-id". */
    const iotc_kv *properties;
    size_t property_count;
    /* Pipeline metadata (set by steps; "error" and "error_step" on the error output). */
    const iotc_kv *metadata;
    size_t metadata_count;
    void *reserved[4];
} iotc_message;

/* ---- Results ------------------------------------------------------------------------------------- */

#define IOTC_OK 0
#define IOTC_ERR_INVALID 1      /* the input is wrong and retrying will not help */
#define IOTC_ERR_RETRY 2        /* a transient failure: try again later */
#define IOTC_ERR_BUSY 3         /* backpressure: the kernel cannot take more now */
#define IOTC_ERR_DENIED 4       /* authentication or authorization refused */
#define IOTC_ERR_NOT_FOUND 5
#define IOTC_ERR_UNSUPPORTED 6
#define IOTC_ERR_INTERNAL 7

/* An error with a message. The callee writes at most `capacity` bytes (NUL-terminated) into `text`. */
typedef struct iotc_error {
    uint32_t struct_size;
    int32_t code;             /* IOTC_ERR_* */
    char *text;
    size_t capacity;
} iotc_error;

/* ---- Host services (the kernel side) ------------------------------------------------------------ */

/* Called once when a submitted message has been accepted (IOTC_OK: the kernel owns it, durably for a
 * durable pipeline, so the device may be acknowledged) or finally refused (any other code). */
typedef void (*iotc_submit_done_fn)(void *done_ctx, int32_t result);

/* Credentials a device presents. Any field may be empty. */
typedef struct iotc_credentials {
    uint32_t struct_size;
    uint32_t reserved0;
    iotc_str protocol;        /* "http", "mqtt", "coap", ... */
    iotc_str device;          /* the device id the device claims (URL path, MQTT client id) */
    iotc_str username;
    iotc_str secret;          /* password or bearer token; the kernel never logs it */
    iotc_str certificate_fingerprint; /* SHA-256 of the client certificate (DER), lower-case hex */
    iotc_str remote_address;
    /* The certificate chain the client presented in its TLS handshake, DER, leaf first (the handshake
     * proved it holds the leaf's key); NULL and 0 when none. The kernel accepts a leaf registered by
     * its fingerprint, or one issued (directly or through intermediates in this chain) by a certificate
     * authority a tenant registered, which names its device by the subject's common name. Formerly
     * reserved: older plugins leave it NULL. */
    const iotc_bytes *certificate_chain;
    size_t certificate_chain_count;
    void *reserved[2];
} iotc_credentials;

/* The identity the kernel grants. The strings belong to the kernel and stay valid until
 * iotc_host.release_identity is called with `handle`. */
typedef struct iotc_identity {
    uint32_t struct_size;
    uint32_t reserved0;
    iotc_str tenant;
    iotc_str device;
    uint64_t handle;
    void *reserved[4];
} iotc_identity;

/* Actions for authorize(). */
#define IOTC_ACTION_PUBLISH 0u
#define IOTC_ACTION_SUBSCRIBE 1u

/* Log levels. */
#define IOTC_LOG_TRACE 0u
#define IOTC_LOG_DEBUG 1u
#define IOTC_LOG_INFO 2u
#define IOTC_LOG_NOTICE 3u
#define IOTC_LOG_WARNING 4u
#define IOTC_LOG_ERROR 5u

/* Metric types. */
#define IOTC_METRIC_COUNTER 0u   /* value is an increment */
#define IOTC_METRIC_GAUGE 1u     /* value is the new level */
#define IOTC_METRIC_HISTOGRAM 2u /* value is one observation, in seconds for durations */

/* Services the kernel offers to one component instance. `ctx` identifies that instance: pass it back
 * with every call. All functions may be called from any thread. */
typedef struct iotc_host {
    uint32_t struct_size;
    uint32_t abi_version;
    void *ctx;

    /* Source: hand a message to the kernel. Returns IOTC_OK when queued (done_fn will be called exactly
     * once, possibly before submit returns), IOTC_ERR_BUSY for backpressure (retry later; done_fn is not
     * called), or another code when refused (done_fn is not called). done_fn may be NULL for
     * fire-and-forget messages. */
    int32_t (*submit)(void *ctx, const iotc_message *message, iotc_submit_done_fn done_fn, void *done_ctx);

    /* Sink, and source for downlink: settle a message received with an ack token. result is IOTC_OK,
     * IOTC_ERR_RETRY (the kernel retries with backoff) or IOTC_ERR_INVALID (no retry: dead letter).
     * reason may be NULL. */
    void (*ack)(void *ctx, uint64_t ack_token, int32_t result, const char *reason);

    /* Authenticate a device. On IOTC_OK, *identity is filled and must later be released. */
    int32_t (*authenticate)(void *ctx, const iotc_credentials *credentials, iotc_identity *identity);
    /* May this identity publish to / subscribe to this canonical topic? IOTC_OK or IOTC_ERR_DENIED. */
    int32_t (*authorize)(void *ctx, uint64_t identity_handle, uint32_t action, iotc_str topic);
    void (*release_identity)(void *ctx, uint64_t identity_handle);

    /* Connection state of a device held by a source. */
    void (*device_connected)(void *ctx, uint64_t identity_handle, iotc_str remote_address);
    void (*device_disconnected)(void *ctx, uint64_t identity_handle, iotc_str reason);

    void (*log)(void *ctx, uint32_t level, iotc_str text);
    void (*metric)(void *ctx, uint32_t type, iotc_str name, const iotc_kv *labels, size_t label_count,
                   double value);

    /* Source: would the kernel take a message on this topic from this source now? IOTC_OK when some
     * pipeline reads it and all of those have room, IOTC_ERR_BUSY when one of them is full (submit would
     * answer IOTC_ERR_BUSY), IOTC_ERR_NOT_FOUND when no pipeline reads it. Lets a source skip building
     * messages that would be refused, and lets one that also routes between its own devices (an MQTT
     * broker) skip messages no pipeline takes. Taken from a reserved slot: NULL from kernels that
     * predate it, so check first. */
    int32_t (*routes)(void *ctx, iotc_str topic);

    /* Sink: settle several messages with one outcome, as `ack` does for one; for sinks that write in
     * batches. Taken from a reserved slot: NULL from kernels that predate it, so check first. */
    void (*ack_batch)(void *ctx, const uint64_t *ack_tokens, size_t count, int32_t result, const char *reason);

    /* DTLS sources: the pre-shared key for the PSK identity a device presented in its handshake, from
     * the device registry. On IOTC_OK, *key_len is the key's length, its bytes are in key when it fits
     * in key_capacity, and *identity is filled as by authenticate (release it). IOTC_ERR_DENIED when the
     * identity is unknown, revoked or expired (counted and audited as a failed authentication). Taken
     * from a reserved slot: NULL from kernels that predate it, so check first. */
    int32_t (*preshared_key)(void *ctx, iotc_str psk_identity, iotc_str remote_address, uint8_t *key,
                             size_t key_capacity, size_t *key_len, iotc_identity *identity);

    /* The attributes the operator set for the device authenticated as identity_handle (its
     * configuration), as a UTF-8 JSON object ("{}" for none). On IOTC_OK, *length is the JSON's length
     * and its bytes are in buffer when it fits in capacity (call again with a larger buffer when not).
     * IOTC_ERR_NOT_FOUND for an unknown handle. Taken from a reserved slot: NULL from kernels that
     * predate it, so check first. */
    int32_t (*device_attributes)(void *ctx, uint64_t identity_handle, uint8_t *buffer, size_t capacity, size_t *length);

    /* Sources that reach devices themselves (a Modbus master polling PLCs): an identity for a device
     * the source's own configuration names, granted without credentials since the operator wrote it
     * into the pipeline file. Use it with device_connected and device_disconnected (presence, and
     * commands routed to this source) and release it like any other. IOTC_ERR_INVALID for a tenant or
     * device id that cannot name a device. Taken from a reserved slot: NULL from kernels that predate
     * it, so check first. */
    int32_t (*claim_device)(void *ctx, iotc_str tenant, iotc_str device, iotc_identity *identity);

    void *reserved[3];
} iotc_host;

/* ---- Config specs -------------------------------------------------------------------------------- */

/* Severities of check() findings. */
#define IOTC_CHECK_ERROR 0u
#define IOTC_CHECK_WARNING 1u
#define IOTC_CHECK_NOTE 2u

/* Field types. */
#define IOTC_FIELD_STRING 0u
#define IOTC_FIELD_INT 1u
#define IOTC_FIELD_FLOAT 2u
#define IOTC_FIELD_BOOL 3u
#define IOTC_FIELD_DURATION 4u   /* "250ms", "5s", "1m", "2h" */
#define IOTC_FIELD_BYTE_SIZE 5u  /* "512", "64KiB", "1MiB" */
#define IOTC_FIELD_LIST 6u       /* of element_type (and of `fields` when that is OBJECT) */
#define IOTC_FIELD_OBJECT 7u     /* with `fields` */
#define IOTC_FIELD_MAP 8u        /* string keys to element_type values */
#define IOTC_FIELD_ANY 9u

/* Field flags. */
#define IOTC_FIELD_REQUIRED 0x1u
#define IOTC_FIELD_SECRET 0x2u   /* never logged or shown; may use ${env:NAME} and ${file:PATH} */
#define IOTC_FIELD_ADVANCED 0x4u
#define IOTC_FIELD_DEPRECATED 0x8u

/* One configuration field of a component. */
typedef struct iotc_config_field {
    uint32_t struct_size;
    uint32_t type;                 /* IOTC_FIELD_* */
    uint32_t element_type;         /* for LIST and MAP */
    uint32_t flags;                /* IOTC_FIELD_* flags */
    const char *name;              /* snake_case */
    const char *description;
    const char *default_json;      /* JSON text of the default, or NULL */
    const char *example;           /* YAML text of an example value, or NULL */
    const char *const *options;    /* allowed values of a STRING field, NULL-terminated, or NULL */
    const struct iotc_config_field *fields; /* for OBJECT, and LIST/MAP of OBJECT */
    size_t field_count;
    void *reserved[4];
} iotc_config_field;

/* ---- Components ---------------------------------------------------------------------------------- */

#define IOTC_COMPONENT_SOURCE 1u
#define IOTC_COMPONENT_SINK 2u
#define IOTC_COMPONENT_STEP 3u

/* A source, sink or step. Instances are opaque pointers the plugin creates. Lifecycle:
 * create -> start -> (write | downlink | process)* -> stop -> destroy. */
typedef struct iotc_component {
    uint32_t struct_size;
    uint32_t kind;                 /* IOTC_COMPONENT_* */
    const char *name;              /* the name pipelines use, e.g. "http", "mqtt_publish" */
    const char *summary;           /* one line */
    const char *description;       /* Markdown, may be NULL */
    const iotc_config_field *fields;
    size_t field_count;

    /* Anything the plugin wants to find again in create(); the kernel never reads it. */
    void *user_data;

    /* Create an instance from its validated configuration, given as a JSON object with defaults
     * applied, secrets resolved, durations in seconds and byte sizes in bytes. `self` is this
     * descriptor; `host` stays valid until destroy. Returns NULL and fills err on failure. */
    void *(*create)(const struct iotc_component *self, const iotc_host *host, const char *config_json,
                    size_t config_len, iotc_error *err);
    /* Start work (bind sockets, connect). Returns IOTC_OK or fills err. */
    int32_t (*start)(void *instance, iotc_error *err);
    /* Stop taking new work and finish or settle what is in flight; blocks until done. */
    void (*stop)(void *instance);
    void (*destroy)(void *instance);

    /* Sink: deliver one message; settle it later with host->ack(ack_token). Returns IOTC_OK when taken,
     * IOTC_ERR_BUSY when the plugin cannot take more now (the kernel retries soon; no ack follows).
     * May be called from several threads at once; the ack may come before write returns. */
    int32_t (*write)(void *instance, const iotc_message *message, uint64_t ack_token);

    /* Source: deliver a downlink message (command, config, firmware) to a device it holds; settle with
     * host->ack(ack_token). NULL when the source has no downlink. */
    int32_t (*downlink)(void *instance, const iotc_message *message, uint64_t ack_token);

    /* Step: transform one message. Call emit(emit_ctx, out) zero or more times before returning;
     * return IOTC_OK, or an error code with err filled (the message goes to the error output). */
    int32_t (*process)(void *instance, const iotc_message *message,
                       void (*emit)(void *emit_ctx, const iotc_message *out), void *emit_ctx,
                       iotc_error *err);

    /* Sink: deliver several messages at once, as `write` does one at a time; message i is settled with
     * ack_tokens[i]. Returns how many were taken, from the front; the rest are offered again later, as
     * after IOTC_ERR_BUSY. Taken from a reserved slot: NULL when the sink takes one message per call. */
    size_t (*write_batch)(void *instance, const iotc_message *messages, const uint64_t *ack_tokens, size_t count);

    /* Source: close every connection of the device authenticated with this identity handle (its
     * credentials were revoked), telling it why where the protocol can (MQTT 5: DISCONNECT 0x98,
     * administrative action). Returns the number of connections closed. Taken from a reserved slot:
     * NULL when the source holds no long-lived connections. */
    size_t (*disconnect)(void *instance, uint64_t identity_handle, iotc_str reason);

    /* Checks a configuration beyond what the field spec says (ranges, overlaps, references between
     * fields) without creating an instance; `iotc check` and the hub's start call it with the config
     * create() would get. report() is called once per finding with its severity, the path of the field
     * it concerns within the config ("devices.0.registers.3.address"; empty for the whole component),
     * which the kernel turns into the file:line:column of that field, and the text (and hint, may be
     * empty). A note is information the operator may want (a plan the plugin derived from the config).
     * Taken from a reserved slot: NULL when the component has no checks of its own. */
    void (*check)(const struct iotc_component *self, const char *config_json, size_t config_len,
                  void (*report)(void *report_ctx, uint32_t severity, iotc_str path, iotc_str text, iotc_str hint),
                  void *report_ctx);

    void *reserved[5];
} iotc_component;

/* What a plugin library describes of itself. */
typedef struct iotc_plugin {
    uint32_t struct_size;
    uint32_t abi_version;          /* the version chosen from those offered, or the one wanted */
    const char *name;              /* lower-case words, e.g. "http" */
    const char *version;           /* the plugin's own semantic version */
    const char *description;
    const iotc_component *components;
    size_t component_count;
    void *reserved[4];
} iotc_plugin;

/* The single exported entry point. The kernel offers the ABI versions it speaks; the plugin returns a
 * descriptor that stays valid for the life of the process. */
typedef const iotc_plugin *(*iotc_plugin_entry_fn)(const uint32_t *offered_versions, size_t offered_count);

#define IOTC_PLUGIN_ENTRY_SYMBOL "iotc_plugin_entry"

/* Layout checks used by the kernel's tests. */
size_t iotc_abi_message_size(void);
size_t iotc_abi_host_size(void);
size_t iotc_abi_component_size(void);

#ifdef __cplusplus
}
#endif

#endif /* IOTC_PLUGIN_H */
