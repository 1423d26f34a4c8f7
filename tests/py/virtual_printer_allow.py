"""Send harmless settings to one of printgate's virtual printers with bambulabs-api 2.6.6
(pinned in .ci/run), unmodified: its set_print_speed_lvl, and a raw `xcam_control_set` JSON
published on the library's own paho client (bambulabs-api has no call for it).

Usage: virtual_printer_allow.py HOST PORT SERIAL ACCESS_CODE

Prints one JSON line with printgate's acknowledgement (result, reason) of each and exits 0, or
exits 1 with the failure on stderr. What reached the simulated printer is checked by the Rust
test on the simulator's command log.
"""

import json
import sys
import time

TIMEOUT = 30.0


def wait_for(what, pred):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise SystemExit(f"FAILED: {what}: not within {TIMEOUT} s")


def main():
    import bambulabs_api as bl

    host, port, serial, code = sys.argv[1:5]
    c = bl.PrinterMQTTClient(host, code, serial, port=int(port))
    seen = []

    def on_message(_c, _client, _userdata, msg):
        try:
            seen.append(json.loads(msg.payload))
        except ValueError:
            pass

    c.on_message_handler = on_message
    c.connect()
    c.start()
    try:
        wait_for("connected", c.is_connected)

        def ack(section, command):
            # printgate's own acknowledgement carries a reason naming printgate.
            return [m[section] for m in seen if section in m
                    and m[section].get("command") == command
                    and "printgate" in str(m[section].get("reason", ""))]

        out = {}
        if not c.set_print_speed_lvl(3):
            raise SystemExit("FAILED: set_print_speed_lvl did not publish")
        a = wait_for("print_speed acknowledged", lambda: ack("print", "print_speed"))[0]
        out["print_speed"] = {"result": a["result"], "reason": a["reason"]}
        raw = {"xcam": {"command": "xcam_control_set", "sequence_id": "901",
                        "module_name": "spaghetti_detector", "control": False, "print_halt": False}}
        c._client.publish(f"device/{serial}/request", json.dumps(raw))
        a = wait_for("xcam_control_set acknowledged", lambda: ack("xcam", "xcam_control_set"))[0]
        out["xcam_control_set"] = {"result": a["result"], "reason": a["reason"]}
        print(json.dumps(out))
    finally:
        c.stop()
        c._client.disconnect()


if __name__ == "__main__":
    main()
