"""A long-lived MQTT subscriber for tests/broker_fault.rs (paho-mqtt 2.x, MQTT 3.1.1).

Usage: broker_fault_watcher.py HOST PORT USER PASSWORD
Connects, subscribes to printgate/# and homeassistant/# at every (re)connect, and lets paho's
own automatic reconnection bring it back after the broker goes away. Prints one JSON line per
event on stdout (flushed at once):
  {"event": "connected", "n": N}        N counts the connections (1, 2, ...)
  {"event": "disconnected", "n": N}
  {"event": "message", "n": N, "topic": T, "retain": bool, "payload": "..."}
Runs until stdin closes (the test ends).
"""
import json
import sys
import threading

import paho.mqtt.client as mqtt

host, port, user, password = sys.argv[1:5]
connections = 0
lock = threading.Lock()


def say(obj):
    with lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def on_connect(client, userdata, flags, reason_code, properties):
    global connections
    if reason_code.is_failure:
        say({"event": "refused", "reason": str(reason_code)})
        return
    connections += 1
    say({"event": "connected", "n": connections})
    client.subscribe("printgate/#", qos=1)
    client.subscribe("homeassistant/#", qos=1)


def on_disconnect(client, userdata, flags, reason_code, properties):
    say({"event": "disconnected", "n": connections})


def on_message(client, userdata, msg):
    say(
        {
            "event": "message",
            "n": connections,
            "topic": msg.topic,
            "retain": bool(msg.retain),
            "payload": msg.payload.decode("utf-8", "replace"),
        }
    )


c = mqtt.Client(
    mqtt.CallbackAPIVersion.VERSION2,
    client_id="paho-broker-fault-watcher",
    protocol=mqtt.MQTTv311,
    clean_session=True,
)
c.username_pw_set(user, password)
# Come back quickly: the test measures the restart, not paho's default 1..120 s back-off.
c.reconnect_delay_set(min_delay=1, max_delay=2)
c.on_connect = on_connect
c.on_disconnect = on_disconnect
c.on_message = on_message
c.connect_async(host, int(port), keepalive=10)
c.loop_start()
sys.stdin.read()
c.loop_stop()
