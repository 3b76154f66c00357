import IoTCPluginKit

let pluginVersion = "0.2.0"

@_cdecl("iotc_plugin_entry") public func iotcPluginEntry(_ v: UnsafePointer<UInt32>?, _ n: Int) -> UnsafeRawPointer? {
    Plugin.entry(name: "mqtt", version: pluginVersion, description: "MQTT 3.1.1 and 5.0: a server for devices and a client for external brokers.",
                 components: [MQTTServerSource.self, MQTTPublishSink.self, MQTTSubscribeSource.self], offered: v, count: n)
}
