import Hummingbird
import IoTCKernel
import IoTCPluginKit
import IoTCStore

/// The operator API described as OpenAPI 3.1, served at `/openapi.json`. A test checks that it names
/// every route the router has and no other, and schemathesis checks the running API against it.
enum OpenAPI {
    // MARK: - Schema helpers

    static let string: Value = ["type": "string"]
    static let integer: Value = ["type": "integer"]
    static let boolean: Value = ["type": "boolean"]
    static let millis: Value = ["type": "integer", "description": "milliseconds since the epoch"]
    static let nullableMillis: Value = ["type": ["integer", "null"], "description": "milliseconds since the epoch"]
    static func ref(_ name: String) -> Value { ["$ref": .string("#/components/schemas/\(name)")] }
    static func array(_ items: Value) -> Value { ["type": "array", "items": items] }
    static func text(min: Int? = nil, max: Int? = nil, pattern: String? = nil) -> Value {
        var o: Value.Object = ["type": "string"]
        if let min { o["minLength"] = .int(Int64(min)) }
        if let max { o["maxLength"] = .int(Int64(max)) }
        if let pattern { o["pattern"] = .string(pattern) }
        return .object(o)
    }
    static func number(_ type: String = "integer", min: Double? = nil, max: Double? = nil) -> Value {
        var o: Value.Object = ["type": .string(type)]
        if let min { o["minimum"] = type == "integer" ? .int(Int64(min)) : .double(min) }
        if let max { o["maximum"] = type == "integer" ? .int(Int64(max)) : .double(max) }
        return .object(o)
    }
    static func enumeration(_ values: [String]) -> Value { ["type": "string", "enum": .array(values.map(Value.string))] }

    /// An object. Request bodies are `closed`: the API refuses fields it does not know, and takes null
    /// for a field it does not require as leaving it out.
    static func object(_ properties: [(String, Value)], required: [String] = [], closed: Bool = false) -> Value {
        let properties = closed ? properties.map { name, schema in required.contains(name) ? (name, schema) : (name, ["anyOf": [schema, ["type": "null"]]]) } : properties
        var o: Value.Object = ["type": "object", "properties": .object(Value.Object(properties))]
        if !required.isEmpty { o["required"] = .array(required.map(Value.string)) }
        if closed { o["additionalProperties"] = false }
        return .object(o)
    }

    static let tenantID = text(min: 1, max: 63, pattern: "^[a-z0-9][a-z0-9-]*$")
    static let deviceID = text(min: 1, max: 128, pattern: "^[A-Za-z0-9._:-]+$")
    static let role = enumeration(["viewer", "operator", "admin", "owner"])
    static let labels: Value = ["type": "object", "maxProperties": 64, "propertyNames": text(min: 1, max: 63, pattern: "^[A-Za-z0-9._-]+$"),
                                "additionalProperties": text(max: 256)]

    static let schemas: [(String, Value)] = [
        ("Problem", object([("type", string), ("title", string), ("status", integer), ("detail", string)], required: ["title", "status", "detail"])),
        ("Tenant", object([("id", string), ("name", string), ("system", boolean), ("created_at", millis), ("retention_days", integer)],
                          required: ["id", "name", "system", "created_at", "retention_days"])),
        ("APIKey", object([("id", string), ("prefix", string), ("tenant", string), ("name", string), ("role", role), ("created_at", millis),
                           ("expires_at", nullableMillis), ("last_used_at", nullableMillis), ("revoked_at", nullableMillis),
                           ("scopes", ["type": "array", "items": string, "description": "the areas (tags) of the API the key is limited to; empty for all"]),
                           ("secret", ["type": "string", "description": "only in the answer that created the key"])],
                          required: ["id", "prefix", "tenant", "name", "role", "created_at"])),
        ("User", object([("email", string), ("name", string), ("role", role), ("tenant", string), ("created_at", millis)],
                        required: ["email", "name", "role", "tenant", "created_at"])),
        ("AuditEntry", object([("seq", integer), ("at", millis), ("tenant", string), ("actor", string), ("action", string), ("target", string),
                               ("source", string), ("outcome", string), ("detail", string), ("hash", string)],
                              required: ["seq", "at", "tenant", "actor", "action", "target", "outcome", "hash"])),
        ("Device", object([("id", string), ("tenant", string), ("name", string), ("profile", string), ("labels", ["type": "object", "additionalProperties": string]),
                           ("created_at", millis),
                           ("state", ["oneOf": [["type": "null"], object([("connected", boolean), ("source", string), ("remote_address", string),
                                                                        ("since", millis), ("last_seen", millis)], required: ["connected", "source", "since", "last_seen"])]])],
                          required: ["id", "tenant", "name", "profile", "labels", "created_at"])),
        ("Credential", object([("id", string), ("device", string), ("kind", enumeration(["token", "certificate", "psk"])), ("created_at", millis),
                               ("expires_at", nullableMillis), ("revoked_at", nullableMillis), ("fingerprint", string),
                               ("token", ["type": "string", "description": "only in the answer that issued it"]), ("identity", string),
                               ("key", ["type": "string", "description": "a pre-shared key in hex, only in the answer that made it"])],
                              required: ["id", "device", "kind", "created_at"])),
        ("Command", object([("id", string), ("device", string), ("name", string),
                            ("status", enumeration(["queued", "delivered", "succeeded", "failed", "expired"])), ("payload", [:]),
                            ("created_at", millis), ("expires_at", millis), ("delivered_at", nullableMillis), ("completed_at", nullableMillis),
                            ("result", ["description": "the device's answer (any JSON), null until it answers"]), ("detail", string)],
                           required: ["id", "device", "name", "status", "created_at", "expires_at"])),
        ("Items", object([("items", array([:]))], required: ["items"])),
        ("Alert", object([("id", string), ("tenant", string), ("rule", string), ("key", string), ("device", string), ("severity", string),
                          ("message", string), ("state", enumeration(Alert.State.allCases.map(\.rawValue))), ("raised_at", millis), ("updated_at", millis),
                          ("count", ["type": "integer", "description": "how often the rule raised it; repeats and raises soon after a clear fold into it"]),
                          ("failed_notifications", ["type": "integer", "description": "notifications of it that could not be delivered (their sink gave up; they are in the dead letters)"]),
                          ("history", array(object([("at", millis), ("action", string), ("by", ["type": ["string", "null"], "description": "the API key that acted; null for the rule"]),
                                                    ("sink", ["type": "string", "description": "for notified and notification_failed: the sink"]),
                                                    ("reason", ["type": "string", "description": "for notification_failed: why"])],
                                                   required: ["at", "action"])))],
                         required: ["id", "tenant", "rule", "key", "device", "severity", "message", "state", "raised_at", "updated_at", "count",
                                    "failed_notifications", "history"])),
        ("ProvisioningKey", object([("id", string), ("name", string), ("profile", string), ("created_at", millis), ("expires_at", nullableMillis),
                                    ("revoked_at", nullableMillis), ("secret", ["type": "string", "description": "only in the answer that created the key"])],
                                   required: ["id", "name", "profile", "created_at"])),
        ("CertificateAuthority", object([("id", string), ("name", string), ("subject", string),
                                         ("fingerprint", ["type": "string", "description": "SHA-256 of the certificate (DER), hex"]),
                                         ("profile", string), ("not_after", millis), ("created_at", millis),
                                         ("revocation_list", ["oneOf": [["type": "null"], object([
                                             ("this_update", millis), ("next_update", nullableMillis),
                                             ("revoked", ["type": "integer", "description": "serial numbers listed"]), ("set_at", millis),
                                         ], required: ["this_update", "next_update", "revoked", "set_at"])]])],
                                        required: ["id", "name", "subject", "fingerprint", "profile", "not_after", "created_at", "revocation_list"])),
    ]

    // MARK: - Operations

    struct Operation {
        var method: String
        var path: String
        var summary: String
        var tag: String
        var access: String
        var query: [(String, Value)] = []
        var body: Value? = nil
        var bodyType = "application/json"
        var ok: (code: Int, schema: Value?) = (200, ref("Items"))
        var open = false
        var bodyRequired = true
        var requiredQuery: Set<String> = []
    }

    static let tenantQuery: (String, Value) = ("tenant", text(min: 1, max: 63, pattern: "^[a-z0-9][a-z0-9-]*$"))
    static let limitQuery: (String, Value) = ("limit", number(min: 1, max: 1000))

    static let operations: [Operation] = [
        Operation(method: "get", path: "/health", summary: "Liveness", tag: "hub", access: "open", ok: (200, object([("status", string)])), open: true),
        Operation(method: "get", path: "/ready", summary: "Readiness", tag: "hub", access: "open", ok: (200, object([("status", string)])), open: true),
        Operation(method: "get", path: "/metrics", summary: "Prometheus metrics (text exposition format)", tag: "hub", access: "open", ok: (200, nil), open: true),
        Operation(method: "get", path: "/openapi.json", summary: "This document", tag: "hub", access: "open", ok: (200, ["type": "object"]), open: true),
        Operation(method: "get", path: "/v1/whoami", summary: "The calling key and its tenant", tag: "session", access: "any key, whatever its scopes",
                  ok: (200, object([("key", ref("APIKey")), ("tenant", ref("Tenant"))], required: ["key", "tenant"]))),
        Operation(method: "get", path: "/v1/tenants", summary: "Tenants the key may see", tag: "accounts", access: "viewer"),
        Operation(method: "post", path: "/v1/tenants", summary: "Create a tenant and its owner key (the secret is in this answer only)", tag: "accounts",
                  access: "owner of the system tenant", body: object([("id", tenantID), ("name", text(min: 1, max: 200))], required: ["id"], closed: true),
                  ok: (201, object([("tenant", ref("Tenant")), ("owner_key", ref("APIKey"))], required: ["tenant", "owner_key"]))),
        Operation(method: "get", path: "/v1/tenants/{tenant}", summary: "One tenant", tag: "accounts", access: "viewer", ok: (200, ref("Tenant"))),
        Operation(method: "patch", path: "/v1/tenants/{tenant}", summary: "Change a tenant's retention", tag: "accounts", access: "owner",
                  body: object([("retention_days", number(min: 0, max: 36500))], required: ["retention_days"], closed: true), ok: (200, ref("Tenant"))),
        Operation(method: "delete", path: "/v1/tenants/{tenant}", summary: "Delete a tenant and all it owns", tag: "accounts",
                  access: "owner of the system tenant", ok: (204, nil)),
        Operation(method: "get", path: "/v1/api-keys", summary: "The tenant's API keys (no secrets)", tag: "accounts", access: "admin", query: [tenantQuery]),
        Operation(method: "post", path: "/v1/api-keys", summary: "Create an API key (the secret is in this answer only)", tag: "accounts", access: "admin",
                  query: [tenantQuery],
                  body: object([("name", text(min: 1, max: 200)), ("role", role), ("expires_in", number(min: 60, max: 315_360_000)),
                                ("scopes", ["type": "array", "items": enumeration(APIKey.allScopes)])],
                               required: ["name"], closed: true),
                  ok: (201, ref("APIKey"))),
        Operation(method: "delete", path: "/v1/api-keys/{key}", summary: "Revoke an API key", tag: "accounts", access: "admin", query: [tenantQuery], ok: (204, nil)),
        Operation(method: "get", path: "/v1/users", summary: "The tenant's users", tag: "accounts", access: "admin", query: [tenantQuery]),
        Operation(method: "post", path: "/v1/users", summary: "Add a user", tag: "accounts", access: "admin", query: [tenantQuery],
                  body: object([("email", text(max: 254, pattern: "^[^@ ]+@[^@ ]+$")), ("name", text(max: 200)), ("role", role),
                                ("password", text(min: 12, max: 1024))], required: ["email", "password"], closed: true),
                  ok: (201, ref("User"))),
        Operation(method: "delete", path: "/v1/users/{email}", summary: "Remove a user", tag: "accounts", access: "admin", query: [tenantQuery], ok: (204, nil)),
        Operation(method: "post", path: "/v1/login", summary: "A user's session key (valid 12 hours)", tag: "accounts", access: "open; 5 attempts per user, then one a minute",
                  body: object([("tenant", string), ("email", string), ("password", string)], required: ["tenant", "email", "password"], closed: true),
                  ok: (201, ref("APIKey")), open: true),
        Operation(method: "get", path: "/v1/audit", summary: "Audit entries, newest first", tag: "audit", access: "admin",
                  query: [tenantQuery, ("action", string), ("before", number(min: 0, max: 4_611_686_018_427_387_904)), limitQuery]),
        Operation(method: "get", path: "/v1/devices", summary: "The tenant's devices, a page at a time", tag: "devices", access: "viewer",
                  query: [tenantQuery, ("label", text(pattern: "^[A-Za-z0-9._-]{1,63}:")), ("after", string), limitQuery],
                  ok: (200, object([("items", array(ref("Device"))), ("next", ["type": ["string", "null"]])], required: ["items", "next"]))),
        Operation(method: "post", path: "/v1/devices", summary: "Register a device", tag: "devices", access: "admin", query: [tenantQuery],
                  body: object([("id", deviceID), ("name", text(max: 200)), ("profile", tenantID), ("labels", labels)],
                               required: ["id"], closed: true),
                  ok: (201, ref("Device"))),
        Operation(method: "post", path: "/v1/devices/bulk",
                  summary: "Register up to 10,000 devices, with a report per row (also as CSV: Content-Type text/csv, a header line naming id, name, profile)",
                  tag: "devices", access: "admin", query: [tenantQuery, ("tokens", enumeration(["true", "false"]))],
                  body: object([("devices", ["type": "array", "maxItems": 10000,
                                             "items": object([("id", string), ("name", string), ("profile", string), ("labels", ["type": "object", "additionalProperties": string])],
                                                             required: ["id"], closed: true),
                                             "description": "A row that is not a valid device is reported as invalid, not refused"])],
                               required: ["devices"], closed: true),
                  ok: (200, object([("created", integer), ("rows", array(object([("row", integer), ("id", string), ("status", string)])))], required: ["created", "rows"]))),
        Operation(method: "get", path: "/v1/devices/{device}", summary: "One device, with its connection state", tag: "devices", access: "viewer",
                  query: [tenantQuery], ok: (200, ref("Device"))),
        Operation(method: "patch", path: "/v1/devices/{device}", summary: "Change a device's name, profile or labels", tag: "devices", access: "admin",
                  query: [tenantQuery], body: object([("name", text(max: 200)), ("profile", tenantID), ("labels", labels)], closed: true), ok: (200, ref("Device"))),
        Operation(method: "delete", path: "/v1/devices/{device}", summary: "Remove a device (its connections close)", tag: "devices", access: "admin",
                  query: [tenantQuery], ok: (204, nil)),
        Operation(method: "get", path: "/v1/devices/{device}/attributes", summary: "The attributes set for a device (its configuration, which it fetches)",
                  tag: "devices", access: "viewer", query: [tenantQuery], ok: (200, ["type": "object"])),
        Operation(method: "put", path: "/v1/devices/{device}/attributes", summary: "Replace a device's attributes (a JSON object of at most 16 KiB)",
                  tag: "devices", access: "admin", query: [tenantQuery], body: ["type": "object"], ok: (200, ["type": "object"])),
        Operation(method: "get", path: "/v1/devices/{device}/credentials", summary: "A device's credentials (no secrets)", tag: "devices", access: "admin", query: [tenantQuery]),
        Operation(method: "post", path: "/v1/devices/{device}/credentials", summary: "Issue a token or register a certificate fingerprint", tag: "devices",
                  access: "admin", query: [tenantQuery],
                  body: ["oneOf": [
                      object([("kind", ["const": "token"]), ("expires_in", number(min: 60, max: 315_360_000))], closed: true),
                      object([("kind", ["const": "certificate"]), ("fingerprint", text(pattern: "^([0-9A-Fa-f]{2}:?){31}[0-9A-Fa-f]{2}$")),
                              ("expires_in", number(min: 60, max: 315_360_000))], required: ["kind", "fingerprint"], closed: true),
                      object([("kind", ["const": "psk"]), ("identity", text(min: 1, max: 128, pattern: "^[ -~]+$")),
                              ("key", text(min: 32, max: 128, pattern: "^([0-9A-Fa-f]{2})+$")),
                              ("expires_in", number(min: 60, max: 315_360_000))], required: ["kind", "identity"], closed: true),
                  ]],
                  ok: (201, ref("Credential"))),
        Operation(method: "delete", path: "/v1/devices/{device}/credentials/{credential}", summary: "Revoke a credential (its connections close)", tag: "devices",
                  access: "admin", query: [tenantQuery], ok: (204, nil)),
        Operation(method: "get", path: "/v1/devices/{device}/telemetry", summary: "A series: raw points, or one aggregate per bucket", tag: "telemetry",
                  access: "viewer", query: [tenantQuery, ("key", text(min: 1)), ("from", number(min: -9_007_199_254_740_992, max: 9_007_199_254_740_992)), ("to", number(min: -9_007_199_254_740_992, max: 9_007_199_254_740_992)), ("bucket", number(min: 1, max: 9_007_199_254_740_992)),
                                            ("agg", enumeration(["min", "max", "avg", "sum", "count", "last"])), ("limit", number(min: 1, max: 100_000))],
                  ok: (200, object([("device", string), ("key", string), ("from", integer), ("to", integer)], required: ["device", "key", "from", "to"])),
                  requiredQuery: ["key"]),
        Operation(method: "get", path: "/v1/devices/{device}/telemetry/latest", summary: "The latest point of every key", tag: "telemetry", access: "viewer",
                  query: [tenantQuery], ok: (200, ["type": "object", "additionalProperties": object([("time", millis), ("value", ["type": "number"])])])),
        Operation(method: "post", path: "/v1/devices/{device}/commands", summary: "Send a command; wait up to `timeout` seconds for the answer", tag: "commands",
                  access: "operator", query: [tenantQuery],
                  body: object([("name", text(min: 1, max: 64, pattern: "^[^/+#\\u0000-\\u001f\\u007f]+$")), ("payload", [:]),
                                ("timeout", number("number", min: 0, max: 300)), ("expires_in", number(min: 1, max: 2_592_000)), ("source", string)], closed: true),
                  ok: (200, ref("Command"))),
        Operation(method: "get", path: "/v1/devices/{device}/commands", summary: "A device's latest commands", tag: "commands", access: "viewer",
                  query: [tenantQuery, ("status", enumeration(["queued", "delivered", "succeeded", "failed", "expired"])), limitQuery]),
        Operation(method: "get", path: "/v1/devices/{device}/commands/{id}", summary: "One command and its status", tag: "commands", access: "viewer",
                  query: [tenantQuery], ok: (200, ref("Command"))),
        Operation(method: "get", path: "/v1/alerts", summary: "The tenant's alerts, newest first", tag: "alerts", access: "viewer",
                  query: [tenantQuery, ("state", enumeration(Alert.State.allCases.map(\.rawValue))), ("rule", string), ("device", string), limitQuery]),
        Operation(method: "get", path: "/v1/alerts/{id}", summary: "One alert and its history", tag: "alerts", access: "viewer",
                  query: [tenantQuery], ok: (200, ref("Alert"))),
        Operation(method: "post", path: "/v1/alerts/{id}/acknowledge", summary: "Acknowledge an active alert", tag: "alerts", access: "operator",
                  query: [tenantQuery], ok: (200, ref("Alert")), bodyRequired: false),
        Operation(method: "post", path: "/v1/alerts/{id}/clear", summary: "Clear an alert by hand", tag: "alerts", access: "operator",
                  query: [tenantQuery], ok: (200, ref("Alert")), bodyRequired: false),
        Operation(method: "post", path: "/v1/alerts/{id}/close", summary: "Close an alert: it takes no more actions, and the rule's next raise opens a new one",
                  tag: "alerts", access: "operator", query: [tenantQuery], ok: (200, ref("Alert")), bodyRequired: false),
        Operation(method: "get", path: "/v1/provisioning-keys", summary: "The tenant's fleet provisioning keys (no secrets)", tag: "provisioning",
                  access: "admin", query: [tenantQuery]),
        Operation(method: "post", path: "/v1/provisioning-keys", summary: "Create a fleet provisioning key (the secret is in this answer only)",
                  tag: "provisioning", access: "admin", query: [tenantQuery],
                  body: object([("name", text(min: 1, max: 200)), ("profile", tenantID), ("expires_in", number(min: 60, max: 315_360_000))],
                               required: ["name"], closed: true),
                  ok: (201, ref("ProvisioningKey"))),
        Operation(method: "delete", path: "/v1/provisioning-keys/{key}", summary: "Revoke a fleet provisioning key", tag: "provisioning", access: "admin",
                  query: [tenantQuery], ok: (204, nil)),
        Operation(method: "get", path: "/v1/certificate-authorities", summary: "The tenant's certificate authorities, whose client certificates authenticate its devices",
                  tag: "provisioning", access: "admin", query: [tenantQuery]),
        Operation(method: "post", path: "/v1/certificate-authorities",
                  summary: "Register a certificate authority (PEM): client certificates it issues authenticate devices named by their subject common name",
                  tag: "provisioning", access: "admin", query: [tenantQuery],
                  body: object([("name", text(min: 1, max: 200)), ("certificate", text(min: 1, max: 16_384)), ("profile", tenantID)],
                               required: ["name", "certificate"], closed: true),
                  ok: (201, ref("CertificateAuthority"))),
        Operation(method: "get", path: "/v1/certificate-authorities/{authority}", summary: "One certificate authority", tag: "provisioning", access: "admin",
                  query: [tenantQuery], ok: (200, ref("CertificateAuthority"))),
        Operation(method: "delete", path: "/v1/certificate-authorities/{authority}", summary: "Remove a certificate authority (its devices' connections close)",
                  tag: "provisioning", access: "admin", query: [tenantQuery], ok: (204, nil)),
        Operation(method: "put", path: "/v1/certificate-authorities/{authority}/crl",
                  summary: "Set the authority's revocation list (PEM X509 CRL it signed, no older than the one in force): the certificates it lists stop authenticating and their connections close",
                  tag: "provisioning", access: "admin", query: [tenantQuery],
                  body: object([("crl", text(min: 1, max: 2 << 20))], required: ["crl"], closed: true),
                  ok: (200, ref("CertificateAuthority"))),
        Operation(method: "delete", path: "/v1/certificate-authorities/{authority}/crl", summary: "Remove the authority's revocation list",
                  tag: "provisioning", access: "admin", query: [tenantQuery], ok: (204, nil)),
        Operation(method: "put", path: "/v1/devices/{device}/claim-code", summary: "Set a device's claim code (until it is claimed)", tag: "provisioning",
                  access: "admin", query: [tenantQuery],
                  body: object([("code", text(min: 8, max: 128)), ("expires_in", number(min: 60, max: 315_360_000))], required: ["code"], closed: true),
                  ok: (200, object([("device", string), ("expires_at", nullableMillis)], required: ["device", "expires_at"]))),
        Operation(method: "post", path: "/v1/claim", summary: "A device claims its own token with a fleet key and its claim code (once)", tag: "provisioning",
                  access: "open; 5 attempts per device, then one a minute",
                  body: object([("provisioning_key", string), ("device", string), ("code", string)], required: ["provisioning_key", "device", "code"], closed: true),
                  ok: (201, object([("tenant", string), ("device", string), ("credential", ref("Credential"))], required: ["tenant", "device", "credential"])),
                  open: true),
        Operation(method: "get", path: "/v1/pipelines", summary: "Pipelines, sources and sinks", tag: "hub", access: "viewer of the system tenant",
                  ok: (200, object([("pipelines", array([:])), ("sources", array([:])), ("sinks", array([:])), ("files", array(string))],
                                   required: ["pipelines", "sources", "sinks", "files"]))),
        Operation(method: "post", path: "/v1/pipelines/reload", summary: "Re-read the pipeline files", tag: "hub", access: "operator of the system tenant",
                  ok: (200, object([("status", string)]))),
        Operation(method: "post", path: "/v1/pipelines/validate", summary: "Check a pipeline file's new text with the other files: valid or not, with every problem",
                  tag: "hub", access: "operator of the system tenant", query: [("file", string)], body: ["description": "a pipeline file (YAML); any text is taken and checked"], bodyType: "application/yaml",
                  ok: (200, object([("valid", boolean), ("errors", array(string)), ("warnings", array(string))], required: ["valid", "errors", "warnings"]))),
        Operation(method: "put", path: "/v1/pipelines/files/{name}", summary: "Replace a pipeline file and apply it, if the files stay valid (422 otherwise)",
                  tag: "hub", access: "admin of the system tenant", body: ["description": "a pipeline file (YAML); any text is taken and checked"], bodyType: "application/yaml", ok: (200, object([("status", string)]))),
        Operation(method: "get", path: "/v1/plugins", summary: "Loaded plugins", tag: "hub", access: "viewer of the system tenant", ok: (200, array([:]))),
        Operation(method: "get", path: "/v1/dead-letters", summary: "Dead letters, oldest first, a page at a time", tag: "hub", access: "viewer of the system tenant",
                  query: [("after", string), ("limit", number(min: 1, max: 100_000))],
                  ok: (200, object([("total", integer), ("items", array([:])), ("next", ["type": ["string", "null"]])], required: ["total", "items", "next"]))),
        Operation(method: "post", path: "/v1/dead-letters/replay", summary: "Replay dead letters (all, or the ids named)", tag: "hub",
                  access: "operator of the system tenant", body: object([("ids", array(string))], closed: true),
                  ok: (200, object([("replayed", integer), ("skipped", array(string)), ("left", integer)], required: ["replayed", "skipped", "left"])), bodyRequired: false),
        Operation(method: "delete", path: "/v1/dead-letters", summary: "Purge dead letters (all, or the ids named)", tag: "hub",
                  access: "operator of the system tenant", query: [("id", string)], ok: (200, object([("purged", integer)], required: ["purged"]))),
    ]

    /// The operations whose path template `path` fits. A path named as it is (`/v1/devices/bulk`) is
    /// that path, not a parameter's value.
    static func operations(at path: String) -> [Operation] {
        let segments = path.split(separator: "/", omittingEmptySubsequences: false)
        let matching = operations.filter { op in
            let template = op.path.split(separator: "/", omittingEmptySubsequences: false)
            return template.count == segments.count && zip(template, segments).allSatisfy { t, s in t.hasPrefix("{") ? !s.isEmpty : t == s }
        }
        let exact = matching.filter { !$0.path.contains("{") }
        return exact.isEmpty ? matching : exact
    }

    /// The area (scope) of the API a request falls in: its operation's tag. Nil for `session` (what any
    /// key may always do) and for requests the document does not describe.
    static func scope(method: String, path: String) -> String? {
        guard let op = operations(at: path).first(where: { $0.method == method.lowercased() }), op.tag != "session" else { return nil }
        return op.tag
    }

    // MARK: - The document

    static func problem(_ description: String) -> Value {
        ["description": .string(description), "content": ["application/problem+json": ["schema": ref("Problem")]]]
    }

    static func document(version: String) -> Value {
        var paths = Value.Object()
        for op in operations {
            var o: Value.Object = ["summary": .string(op.summary), "tags": [.string(op.tag)], "operationId": .string(op.method + op.path),
                                   "description": .string("Access: \(op.access).")]
            var parameters: [Value] = []
            for name in op.path.split(separator: "/").filter({ $0.hasPrefix("{") }).map({ String($0.dropFirst().dropLast()) }) {
                parameters.append(["name": .string(name), "in": "path", "required": true, "schema": name == "device" ? deviceID : name == "tenant" ? tenantID : string])
            }
            for (name, schema) in op.query {
                parameters.append(["name": .string(name), "in": "query", "required": .bool(op.requiredQuery.contains(name)), "schema": schema])
            }
            if !parameters.isEmpty { o["parameters"] = .array(parameters) }
            if let body = op.body {
                o["requestBody"] = ["required": .bool(op.bodyRequired), "content": [.init(op.bodyType): ["schema": body]]]
            }
            var responses = Value.Object()
            var ok: Value.Object = ["description": op.ok.code == 204 ? "Done" : "OK"]
            if let schema = op.ok.schema { ok["content"] = ["application/json": ["schema": schema]] }
            if op.path == "/metrics" { ok["content"] = ["text/plain": ["schema": string]] }
            responses[String(op.ok.code)] = .object(ok)
            if op.path.hasPrefix("/v1/devices/{device}/commands"), op.method == "post" {
                responses["202"] = ["description": "Queued, or sent and not answered yet", "content": ["application/json": ["schema": ref("Command")]]]
            }
            if op.path.hasPrefix("/v1") {
                responses["400"] = problem("The request is not valid (malformed JSON, unknown fields, wrong types or values)")
                if op.path.hasPrefix("/v1/pipelines/"), op.method != "get", !op.path.hasSuffix("/validate") {
                    responses["422"] = ["description": "The pipeline files have errors (each as file:line:column: error: message); nothing changed",
                                        "content": ["application/problem+json": ["schema": ref("Problem")]]]
                }
                responses["404"] = problem("Not found, or another tenant's")
                responses["413"] = problem("The body is too large")
                responses["429"] = problem("Over the rate limit; see Retry-After")
                responses["401"] = problem(op.open ? "Wrong credentials" : "No valid API key")
                if !op.open { responses["403"] = problem("The key's role or tenant may not do this") }
                if op.method == "post" || op.method == "put" { responses["409"] = problem("It exists already, or is used up") }
                responses["503"] = problem("The store cannot work now (a full disk, a lost connection to its server); see Retry-After")
            }
            o["responses"] = .object(responses)
            if op.open { o["security"] = [] }
            var item: Value.Object
            if case .object(let existing)? = paths[op.path] { item = existing } else { item = Value.Object() }
            item[op.method] = .object(o)
            paths[op.path] = .object(item)
        }
        return [
            "openapi": "3.1.0",
            "info": ["title": "IoT Connect Center operator API", "version": .string(version),
                     "description": "Tenants, API keys, users, devices and their credentials, telemetry, commands, the audit log, and the hub's pipelines and dead letters. Errors are RFC 9457 problem documents."],
            "paths": .object(paths),
            "components": [
                "schemas": .object(Value.Object(schemas)),
                "securitySchemes": ["apiKey": ["type": "http", "scheme": "bearer", "description": "An API key: iotc_<id>_<secret>"]],
            ],
            "security": [["apiKey": []]],
        ]
    }
}

/// Requests no route takes: 405 with `Allow` when the path exists with other methods (as the
/// document says), else 404; both as problem documents. And what no handler answered: a store that
/// cannot work now (a full disk, a lost connection) is 503 with `Retry-After`, anything else 500, both
/// as problem documents and logged.
struct UnroutedRequests<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let e as HTTPError where e.status == .notFound {
            let methods = Self.methods(for: request.uri.path)
            guard !methods.isEmpty else { return HubAPI.problem(.notFound, "no such endpoint; /openapi.json lists them") }
            var r = HubAPI.problem(.methodNotAllowed, "\(request.method.rawValue) is not allowed here; allowed: \(methods.joined(separator: ", "))")
            r.headers[.allow] = methods.joined(separator: ", ")
            return r
        } catch let e as HTTPError {
            throw e
        } catch let e as StoreError where e.kind == .unavailable {
            context.logger.error("\(request.method.rawValue) \(request.uri.path): the store cannot work now: \(e)")
            var r = HubAPI.problem(.serviceUnavailable, "the store cannot work now (\(e)); retry later")
            r.headers[.retryAfter] = "5"
            return r
        } catch {
            context.logger.error("\(request.method.rawValue) \(request.uri.path) failed: \(error)")
            return HubAPI.problem(.internalServerError, "the request failed inside the hub; its log says why")
        }
    }

    /// The methods the document allows on `path`.
    static func methods(for path: String) -> [String] { OpenAPI.operations(at: path).map { $0.method.uppercased() } }
}
