"""Drive one of printgate's virtual printers with third-party Bambu LAN client libraries from
PyPI, unmodified (bambulabs-api 2.6.6 and bambu-connect 0.3.1, pinned in .ci/run), as their
users call them.

Usage: virtual_printer_clients.py state HOST PORT SERIAL ACCESS_CODE SUBTASK_NAME WITH_BAMBU_CONNECT
       virtual_printer_clients.py print HOST MQTT_PORT FTPS_PORT SERIAL ACCESS_CODE FILE

`state`:

- bambulabs-api (its PrinterMQTTClient, the class its Printer wraps, which takes the port):
  connect, wait for the full state and the firmware version, read the typed getters (the
  simulated printer behind printgate is RUNNING the job SUBTASK_NAME), pause and resume through
  the virtual printer and watch the state follow, then send G-code and a start of a file:
  both must be refused with an acknowledgement that says why;
- bambu-connect (hard-codes port 8883, so only when WITH_BAMBU_CONNECT is 1, in a network
  namespace): ExecuteClient's dump_info (pushall) is answered with a full report, and its
  start_print and send_gcode are refused with a reason;
- last, bambulabs-api with a wrong access code: the connection is refused (CONNACK 5).

`print`: bambulabs-api uploads FILE over its FTPS client (PrinterFTPClient, which takes the
port) and asks to print it (start_print_3mf) twice, as a client retrying would: both are
acknowledged as queued, the second as already queued.

Prints one JSON line (what each library saw) and exits 0, or exits 1 with the first failure on
stderr. Whether anything reached the simulated printer is checked by the Rust test, on the
simulator's own command log.
"""

import json
import sys
import threading
import time

TIMEOUT = 30.0


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def wait_for(what, pred, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except Failure:
            raise
        except Exception as e:
            raise Failure(f"{what}: raised {type(e).__name__}: {e}") from e
        time.sleep(0.05)
    raise Failure(f"{what}: not within {timeout} s (last: {last!r})")


def acks(client, section):
    """Acknowledgements the library received for `section` (kept by an on_message hook)."""
    return [m for m in client.seen if section in m and "result" in m[section]]


def bambulabs_api_client(host, port, code, serial):
    import bambulabs_api as bl

    c = bl.PrinterMQTTClient(host, code, serial, port=port)
    c.seen = []
    c.connect_results = []

    def on_message(_c, _client, _userdata, msg):
        try:
            c.seen.append(json.loads(msg.payload))
        except ValueError:
            pass

    def on_connect(_c, _client, _userdata, _flags, rc, _props):
        c.connect_results.append(rc)

    c.on_message_handler = on_message
    c.on_connect_handler = on_connect
    c.connect()
    c.start()
    return c


def bambulabs_api_case(host, port, code, serial, subtask):
    import bambulabs_api as bl

    out = {}
    c = bambulabs_api_client(host, port, code, serial)
    try:
        wait_for("bambulabs-api connected", c.is_connected)
        wait_for("full state (pushall answered from printgate's state)",
                 lambda: "gcode_state" in c.dump().get("print", {}))
        wait_for("firmware version (get_version answered)", c.firmware_version)
        wait_for("the simulated printer's job", lambda: c.subtask_name() == subtask)
        out["state"] = str(c.get_printer_state())
        out["gcode_state"] = c.dump()["print"]["gcode_state"]
        out["subtask_name"] = c.subtask_name()
        out["nozzle_temperature"] = c.get_nozzle_temperature()
        out["bed_temperature"] = c.get_bed_temperature()
        out["layer"] = c.current_layer_num()
        out["total_layers"] = c.total_layer_num()
        out["firmware"] = c.firmware_version()
        check(out["gcode_state"] == "RUNNING", f"state {out['gcode_state']!r}, want RUNNING")

        # Pause and resume: through printgate's controls; the mirrored state follows.
        check(c.pause_print(), "pause_print() did not publish")
        wait_for("PAUSE after pause_print", lambda: c.dump()["print"].get("gcode_state") == "PAUSE")
        wait_for("pause acknowledged", lambda: [a for a in acks(c, "print")
                                                 if a["print"].get("command") == "pause"])
        check(c.resume_print(), "resume_print() did not publish")
        wait_for("RUNNING after resume_print",
                 lambda: c.dump()["print"].get("gcode_state") == "RUNNING")
        out["paused_and_resumed"] = True
        out["pause_ack"] = [a for a in acks(c, "print") if a["print"].get("command") == "pause"][0]["print"]["result"]

        # G-code is refused with a reason.
        c.send_gcode("G28", gcode_check=False)
        gcode = wait_for("G-code refusal", lambda: [a for a in acks(c, "print")
                                                    if a["print"].get("command") == "gcode_line"])
        out["gcode_ack"] = {k: gcode[0]["print"][k] for k in ("result", "reason")}

        # A start request is not a start.
        c.start_print_3mf("vp_start_attempt.gcode.3mf", 1, use_ams=False)
        start = wait_for("project_file refusal", lambda: [a for a in acks(c, "print")
                                                          if a["print"].get("command") == "project_file"])
        out["start_ack"] = {k: start[0]["print"][k] for k in ("result", "reason")}
        out["state_after_start"] = c.dump()["print"].get("gcode_state")
        return out
    finally:
        c.stop()
        c._client.disconnect()


def wrong_code_case(host, port, serial):
    c = bambulabs_api_client(host, port, "00000000", serial)
    try:
        rc = wait_for("CONNACK for a wrong access code", lambda: c.connect_results)
        check(not c.is_connected(), "connected with a wrong access code")
        return {"reason_code": rc[0].value, "text": str(rc[0])}
    finally:
        c.stop()
        c._client.disconnect()


def bambu_connect_case(host, port, code, serial):
    from bambu_connect.ExecuteClient import ExecuteClient

    observer = bambulabs_api_client(host, port, code, serial)
    execute = None
    try:
        wait_for("observer ready", lambda: "gcode_state" in observer.dump().get("print", {}))
        execute = ExecuteClient(host, code, serial)
        fulls = lambda: [m for m in observer.seen if m.get("print", {}).get("msg") == 0]
        before = len(fulls())
        execute.dump_info()
        wait_for("bambu-connect dump_info (pushall) answered with a full report",
                 lambda: len(fulls()) > before)
        execute.start_print("vp_bambu_connect.gcode.3mf")
        start = wait_for("bambu-connect start_print refused",
                         lambda: [a for a in acks(observer, "print")
                                  if a["print"].get("command") == "project_file"
                                  and a["print"].get("subtask_name") == "vp_bambu_connect.gcode.3mf"])
        execute.send_gcode("M104 S230")
        gcode = wait_for("bambu-connect send_gcode refused",
                         lambda: [a for a in acks(observer, "print")
                                  if a["print"].get("command") == "gcode_line"
                                  and "M104" in a["print"].get("param", "")])
        return {
            "start_ack": {k: start[0]["print"][k] for k in ("result", "reason")},
            "gcode_ack": {k: gcode[0]["print"][k] for k in ("result", "reason")},
        }
    finally:
        observer.stop()
        observer._client.disconnect()
        if execute is not None:
            execute.disconnect()


def print_case(host, mqtt_port, ftps_port, serial, code, path):
    import os

    import bambulabs_api as bl

    name = os.path.basename(path)
    ftp = bl.PrinterFTPClient(host, code, port=ftps_port)
    with open(path, "rb") as f:
        result = ftp.upload_file(f, name)
    check(isinstance(result, str) and result.startswith("226"), f"upload of {name}: {result!r}")
    # A file that fails printgate's upload checks is refused (552; the library logs the error
    # and returns None) and kept nowhere.
    import io

    junk = ftp.upload_file(io.BytesIO(b"this is not a sliced project"), "junk.gcode.3mf")
    check(junk is None, f"a file that is not a 3MF was accepted: {junk!r}")
    c = bambulabs_api_client(host, mqtt_port, code, serial)
    try:
        wait_for("bambulabs-api connected", c.is_connected)
        wait_for("full state", lambda: "gcode_state" in c.dump().get("print", {}))
        starts = lambda: [a["print"] for a in acks(c, "print") if a["print"].get("command") == "project_file"]
        check(c.start_print_3mf(name, 1, use_ams=False), "start_print_3mf did not publish")
        wait_for("the print request acknowledged", lambda: len(starts()) >= 1)
        check(c.start_print_3mf(name, 1, use_ams=False), "the resend did not publish")
        wait_for("the resent request acknowledged", lambda: len(starts()) >= 2)
        c.start_print_3mf("junk.gcode.3mf", 1, use_ams=False)
        wait_for("the refused upload cannot be printed", lambda: len(starts()) >= 3)
        junk_ack = starts()[2]
        check(junk_ack["result"] == "failed" and "no file" in junk_ack["reason"], f"{junk_ack}")
        return {
            "upload": result,
            "acks": [{k: a[k] for k in ("result", "reason")} for a in starts()[:2]],
            "junk_ack": {k: junk_ack[k] for k in ("result", "reason")},
            "state": c.dump()["print"].get("gcode_state"),
        }
    finally:
        c.stop()
        c._client.disconnect()


def main():
    if sys.argv[1] == "print":
        host, mqtt_port, ftps_port, serial, code, path = sys.argv[2:8]
        print(json.dumps(print_case(host, int(mqtt_port), int(ftps_port), serial, code, path)))
        return
    host, port, serial, code, subtask, with_bc = sys.argv[2:8]
    port = int(port)
    out = {"bambulabs_api": bambulabs_api_case(host, port, code, serial, subtask)}
    if with_bc == "1":
        check(port == 8883, "bambu-connect needs port 8883")
        out["bambu_connect"] = bambu_connect_case(host, port, code, serial)
    # Last: wrong codes count towards the per-address lockout.
    out["wrong_code"] = wrong_code_case(host, port, serial)
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        main()
    except Failure as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)
