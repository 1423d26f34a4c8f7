"""Drive `printgate sim --standard-ports` with third-party Bambu LAN client libraries from
PyPI, unmodified (bambulabs-api and bambu-connect, versions pinned in .ci/run).

Usage: bambu_clients.py PRINTGATE_BINARY MODELS

Starts the simulator itself (so that it and the clients share one network namespace when the
Rust test runs this script under `unshare`), reads its printer table, and for every printer:

- bambulabs-api: connect, every typed getter, the full state, upload / list / download / delete
  over its FTPS client, start the uploaded file, pause, resume, stop;
- bambu-connect (P1P-shaped printers only, see `bambu_connect_case`): watch client, dump_info
  (pushall), its typed PrinterStatus, its curl-based FTPS listing and download, start_print,
  send_gcode.

Prints one JSON line (what each library saw) and exits 0, or exits 1 with the first failure
(what was expected, what the library returned) on stderr.
"""

import io
import json
import logging
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile

TIMEOUT = 30.0
# Simulated seconds per real second: a 2-hour print lasts 2 minutes, long enough to pause,
# resume and stop it, while PREPARE (20 simulated seconds) passes in a fraction of a second.
TIME_SCALE = "60"

MODEL_CODES = {
    "X1C": "BL-P001",
    "X1E": "C13",
    "P1P": "C11",
    "P1S": "C12",
    "A1": "N2S",
    "A1MINI": "N1",
    "P2S": "N7",
    "H2D": "O1D",
}


# Models whose real reports have the newer firmware's object shapes (X1C 01.09, P2S, H2D).
NEW_SHAPE = {"X1C", "X1E", "P2S", "H2D"}


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
        except Exception as e:  # a getter raising is a failure, reported with its text
            raise Failure(f"{what}: raised {type(e).__name__}: {e}") from e
        time.sleep(0.05)
    raise Failure(f"{what}: not within {timeout} s (last: {last!r})")


def sliced_3mf(model_code, prediction_secs):
    """A minimal sliced project as the printer reads it: plate G-code and slice_info."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("Metadata/plate_1.gcode", "; HEADER_BLOCK_START\nG28\nG1 X10 Y10\n" * 20)
        z.writestr(
            "Metadata/slice_info.config",
            '<?xml version="1.0" encoding="UTF-8"?>\n<config><plate>'
            '<metadata key="index" value="1"/>'
            f'<metadata key="printer_model_id" value="{model_code}"/>'
            f'<metadata key="prediction" value="{prediction_secs}"/>'
            '<metadata key="weight" value="3.21"/>'
            "</plate></config>\n",
        )
    return buf.getvalue()


def start_sim(binary, models, count):
    proc = subprocess.Popen(
        [
            binary, "sim", "--standard-ports",
            "--printers", str(count), "--models", models,
            "--time-scale", TIME_SCALE,
            # bambu-connect opens two MQTT sessions to one printer (watch + execute); a P1
            # accepts one and kicks the older, so the simulator is told to accept two.
            "--max-clients", "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    rows = []
    deadline = time.monotonic() + 60
    while len(rows) < count:
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read()
            raise Failure(f"printgate sim ended before printing its table: {err.strip()}")
        if time.monotonic() > deadline:
            raise Failure("printgate sim printed no table within 60 s")
        if line.startswith("#"):
            continue
        name, model, serial, host, mqtt, ftps, camera, code, _fp = line.split()
        check(mqtt == "8883" and ftps == "990", f"standard ports, got {line.strip()}")
        want_camera = "6000" if model in CHAMBER_IMAGE else "-"
        check(camera == want_camera, f"{model}: camera_port {camera}, want {want_camera}")
        rows.append({"name": name, "model": model, "serial": serial, "host": host, "code": code})
    return proc, rows


# Models with the port-6000 chamber image (JPEG frames over TLS); the others use RTSPS.
CHAMBER_IMAGE = ("P1P", "P1S", "A1", "A1MINI")


def camera_case(row):
    """bambulabs-api's own camera client, as its users start it, reads a frame."""
    import base64

    import bambulabs_api as bl

    p = bl.Printer(row["host"], row["code"], row["serial"])
    p.camera_start()
    try:
        def frame():
            try:
                return p.get_camera_frame()
            except Exception:
                return None
        wait_for(f"{row['model']}: bambulabs-api camera frame", lambda: frame() is not None)
        jpeg = base64.b64decode(frame())
        check(jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9", f"{row['model']}: not a JPEG")
        size = p.get_camera_image().size
        return {"model": row["model"], "bytes": len(jpeg), "size": list(size)}
    finally:
        p.camera_client.alive = False


def bambulabs_api_case(row):
    try:
        return _bambulabs_api_case(row)
    except Failure:
        raise
    except Exception as e:
        import traceback

        raise Failure(f"{row['model']}: bambulabs-api raised {type(e).__name__}: {e}\n"
                      + traceback.format_exc()) from e


def _bambulabs_api_case(row):
    import bambulabs_api as bl

    model = row["model"]
    out = {"model": model}
    p = bl.Printer(row["host"], row["code"], row["serial"])
    p.mqtt_start()
    try:
        wait_for(f"{model}: bambulabs-api connected", p.mqtt_client_connected)
        wait_for(
            f"{model}: full state (pushall answered)",
            lambda: p.mqtt_client_ready() and "gcode_state" in p.mqtt_dump().get("print", {}),
        )
        mc = p.mqtt_client
        wait_for(f"{model}: firmware version (get_version answered)", mc.firmware_version)
        dump = p.mqtt_dump()
        out["print_keys"] = len(dump["print"])

        # Every typed getter the library offers, as its users call them.
        state = p.get_state()
        check(state == bl.GcodeState.IDLE, f"{model}: get_state() {state!r}, want IDLE")
        getters = {
            "get_time": p.get_time(),
            "get_percentage": p.get_percentage(),
            "get_print_speed": p.get_print_speed(),
            "get_bed_temperature": p.get_bed_temperature(),
            "get_nozzle_temperature": p.get_nozzle_temperature(),
            "get_chamber_temperature": p.get_chamber_temperature(),
            "nozzle_type": str(p.nozzle_type()),
            "nozzle_diameter": p.nozzle_diameter(),
            "get_file_name": p.get_file_name(),
            "get_light_state": p.get_light_state(),
            "current_layer_num": p.current_layer_num(),
            "total_layer_num": p.total_layer_num(),
            "get_current_state": str(p.get_current_state()),
            "get_skipped_objects": p.get_skipped_objects(),
            "subtask_name": p.subtask_name(),
            "gcode_file": p.gcode_file(),
            "print_error_code": p.print_error_code(),
            "print_type": p.print_type(),
            "wifi_signal": p.wifi_signal(),
            "firmware_version": mc.firmware_version(),
            "get_sequence_id": mc.get_sequence_id(),
            "gcode_file_prepare_percentage": mc.gcode_file_prepare_percentage(),
            "get_fan_gear": mc.get_fan_gear(),
            "get_part_fan_speed": mc.get_part_fan_speed(),
            "get_aux_fan_speed": mc.get_aux_fan_speed(),
            "get_chamber_fan_speed": mc.get_chamber_fan_speed(),
            "new_printer_firmware": mc.new_printer_firmware(),
            "get_firmware_history": mc.get_firmware_history(),
            "get_access_code": mc.get_access_code(),
        }
        # The library's FilamentTray needs the P1-era tray keys (`k`, `n`, `tray_temp`,
        # `tray_time`); the X1C/P2S/H2D captures' external spool has none of them (and the P2S
        # has no `vt_tray` at all, only `vir_slot`), so there vt_tray() raises on a real
        # printer too. Checked to fail exactly so.
        try:
            vt = p.vt_tray()
            getters["vt_tray"] = {"tray_type": vt.tray_type, "tray_color": vt.tray_color}
            check(model not in NEW_SHAPE, f"{model}: vt_tray() parsed a shape the real printer does not send")
        except (TypeError, AttributeError) as e:
            text = str(e)
            check(model in NEW_SHAPE, f"{model}: vt_tray() raised {text}")
            check(("'k'" in text and "'n'" in text) or (model == "P2S" and "NoneType" in text),
                  f"{model}: vt_tray() failed otherwise than on the real capture: {text}")
            getters["vt_tray"] = f"raises as on the real capture: {text}"
        hub = p.ams_hub()
        getters["ams_hub"] = sorted(hub.ams_hub.keys())
        # The library's AMS getters, as its users read trays: unit -> slot -> filament. Its
        # AMS keeps only trays with an `n` key, which the P1/A1 captures have and the newer
        # models' do not (there it lists the unit with no trays, on a real printer too).
        out["ams"] = {
            str(uid): {
                "humidity": ams.humidity,
                "temperature": ams.temperature,
                "trays": {
                    str(slot): {"tray_type": t.tray_type, "tray_color": t.tray_color,
                                "tray_sub_brands": t.tray_sub_brands, "tray_info_idx": t.tray_info_idx}
                    for slot, t in ams.filament_trays.items()
                },
            }
            for uid, ams in hub.ams_hub.items()
        }
        # The report document the library merged, for printgate's parser to read the same bytes.
        pr = p.mqtt_dump().get("print", {})
        dump = {k: pr[k] for k in ("ams", "vt_tray", "vir_slot") if k in pr}
        extruder = pr.get("device", {}).get("extruder")
        if extruder is not None:
            dump["device"] = {"extruder": extruder}
        out["ams_dump"] = {"print": dump}
        for k, v in getters.items():
            # None is the library's answer for "no firmware update offered".
            check(v is not None or k == "new_printer_firmware", f"{model}: {k}() returned None")
        check(getters["get_light_state"] in ("on", "off"), f"{model}: light {getters['get_light_state']!r}")
        check(20 <= getters["get_nozzle_temperature"] <= 40, f"{model}: idle nozzle {getters['get_nozzle_temperature']}")
        check(getters["nozzle_diameter"] in (0.2, 0.4, 0.6, 0.8), f"{model}: nozzle diameter {getters['nozzle_diameter']}")
        check(getters["wifi_signal"].endswith("dBm"), f"{model}: wifi {getters['wifi_signal']!r}")
        check(getters["firmware_version"].count(".") == 3, f"{model}: firmware {getters['firmware_version']!r}")
        out["getters"] = getters

        # Upload, list, download and delete over the library's FTPS client.
        name = f"bl-{model.lower()}.gcode.3mf"
        data = sliced_3mf(MODEL_CODES[model], 7200)
        res = p.upload_file(io.BytesIO(data), name)
        check(isinstance(res, str) and res.startswith("226"), f"{model}: upload answered {res!r}")
        listing = p.ftp_client.list_directory()
        check(listing is not None and any(l.endswith(" " + name) for l in listing[1]),
              f"{model}: LIST of the root lacks {name}: {listing!r}")
        cache = p.ftp_client.list_cache_dir()
        check(cache is not None and cache[0].startswith("226"), f"{model}: LIST cache {cache!r}")
        back = p.ftp_client.download_file(name)
        check(back is not None and back.getvalue() == data, f"{model}: download differs from upload")

        # Start, pause, resume, stop, watched through the library's own state.
        check(p.start_print(name, 1, use_ams=False), f"{model}: start_print not published")
        wait_for(f"{model}: RUNNING after start_print",
                 lambda: p.get_state() == bl.GcodeState.RUNNING)
        check(p.get_file_name() != "", f"{model}: gcode_file empty while running")
        check(p.subtask_name() == name.removesuffix(".gcode.3mf"),
              f"{model}: subtask_name {p.subtask_name()!r}")
        check(p.pause_print(), f"{model}: pause not published")
        wait_for(f"{model}: PAUSE after pause_print", lambda: p.get_state() == bl.GcodeState.PAUSE)
        check(p.get_current_state() == bl.PrintStatus.PAUSED_USER,
              f"{model}: stg_cur while paused {p.get_current_state()!r}")
        check(p.resume_print(), f"{model}: resume not published")
        wait_for(f"{model}: RUNNING after resume_print", lambda: p.get_state() == bl.GcodeState.RUNNING)
        check(p.stop_print(), f"{model}: stop not published")
        wait_for(f"{model}: FAILED after stop_print", lambda: p.get_state() == bl.GcodeState.FAILED)
        res = p.delete_file(name)
        check(isinstance(res, str) and res.startswith("250"), f"{model}: DELE answered {res!r}")
        out["cycle"] = "RUNNING PAUSE RUNNING FAILED"
    finally:
        p.mqtt_stop()
        p.mqtt_client._client.disconnect()
    return out


def bambu_connect_case(row, uploaded):
    """bambu-connect: its ExecuteClient (pushall, start_print, send_gcode) and FileClient (curl
    listing and download) against the printer, watched through an independent observer
    (bambulabs-api). Its WatchClient builds typed dataclasses that accept only the keys its
    authors saw: every real capture at hand carries more (`upgrade_state.idx2` on P1P/A1,
    `upload.file_size` and more on X1C/P2S/H2D), so on a real printer its watch callback
    raises TypeError too. The script checks that it fails on the simulator in exactly that way
    (an unknown key of the real shape), not on something the simulator made up."""
    import bambulabs_api as bl
    from bambu_connect.ExecuteClient import ExecuteClient
    from bambu_connect.FileClient import FileClient
    from bambu_connect.utils.models import PrinterStatus

    model = row["model"]
    out = {"model": model}
    observer = bl.Printer(row["host"], row["code"], row["serial"])
    observer.mqtt_start()
    execute = None
    try:
        wait_for(f"{model}: observer ready",
                 lambda: observer.mqtt_client_ready() and "gcode_state" in observer.mqtt_dump().get("print", {}))
        execute = ExecuteClient(row["host"], row["code"], row["serial"])
        # A full report (msg 0) after bambu-connect's pushall: a P1 sends only deltas (msg 1)
        # otherwise.
        observer.mqtt_dump()["print"]["msg"] = None
        execute.dump_info()
        wait_for(f"{model}: bambu-connect dump_info (pushall) answered with a full report",
                 lambda: observer.mqtt_dump()["print"].get("msg") == 0)
        try:
            PrinterStatus(**observer.mqtt_dump()["print"])
            out["watch_client"] = "parsed"
        except TypeError as e:
            text = str(e)
            check("unexpected keyword argument" in text and ("'idx2'" in text or "'file_size'" in text),
                  f"{model}: bambu-connect PrinterStatus failed otherwise than on the real captures: {text}")
            out["watch_client"] = f"TypeError as on the real capture: {text}"

        files = FileClient(row["host"], row["code"], row["serial"])
        names = files.get_files("/", ".3mf")
        check(uploaded in names, f"{model}: bambu-connect get_files lacks {uploaded}: {names}")
        with tempfile.TemporaryDirectory() as d:
            check(files.download_file("/" + uploaded, d, verbose=False),
                  f"{model}: bambu-connect download_file failed")
        execute.start_print(uploaded)
        wait_for(f"{model}: RUNNING after bambu-connect start_print",
                 lambda: observer.get_state() == bl.GcodeState.RUNNING)
        check(observer.subtask_name() == uploaded, f"{model}: subtask_name {observer.subtask_name()!r}")
        observer.stop_print()
        wait_for(f"{model}: FAILED after stop", lambda: observer.get_state() == bl.GcodeState.FAILED)
        # On the idle printer (a running job's G-code sets its own temperatures).
        execute.send_gcode("M104 S230")
        wait_for(f"{model}: bambu-connect send_gcode M104 S230 sets the nozzle target",
                 lambda: observer.mqtt_client.get_nozzle_temperature_target() == 230)
        execute.send_gcode("M104 S0")
        wait_for(f"{model}: bambu-connect send_gcode M104 S0 switches the nozzle off",
                 lambda: observer.mqtt_client.get_nozzle_temperature_target() == 0)
        out["files"] = names
        return out
    finally:
        observer.mqtt_stop()
        observer.mqtt_client._client.disconnect()
        if execute is not None:
            execute.disconnect()


def ssdp_listener():
    """A discovery client as Bambu Studio and Home Assistant run it: UDP port 2021 on every
    address, SO_REUSEADDR (Studio may hold the port too)."""
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 2021))
    s.settimeout(1.0)
    return s


def ssdp_case(sock, rows):
    """Every printer's NOTIFY reaches a listener on 2021: USN = serial, Location = its
    address, DevModel = its model code."""
    want = {r["serial"]: r for r in rows}
    heard = {}
    deadline = time.monotonic() + TIMEOUT
    while len(heard) < len(want) and time.monotonic() < deadline:
        try:
            data, (src, _port) = sock.recvfrom(4096)
        except OSError:
            continue
        text = data.decode("utf-8", "replace")
        if not text.startswith("NOTIFY * HTTP/1.1"):
            continue
        headers = {}
        for line in text.split("\r\n")[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        usn = headers.get("usn")
        if usn in want:
            r = want[usn]
            check(headers.get("nt") == "urn:bambulab-com:device:3dprinter:1", f"NT of {usn}: {headers}")
            check(headers.get("location") == r["host"] == src, f"Location/source of {usn}: {headers} from {src}")
            check(headers.get("devmodel.bambu.com") == MODEL_CODES[r["model"]], f"DevModel of {usn}: {headers}")
            heard[usn] = headers.get("devmodel.bambu.com")
    check(len(heard) == len(want), f"SSDP NOTIFY heard from {sorted(heard)}, want {sorted(want)}")
    return heard


def main():
    logging.basicConfig(level=logging.CRITICAL)
    binary, models = sys.argv[1], sys.argv[2]
    count = len(models.split(","))
    sock = ssdp_listener()
    proc, rows = start_sim(binary, models, count)
    result = {"bambulabs_api": [], "bambu_connect": []}
    try:
        result["ssdp"] = ssdp_case(sock, rows)
        for row in rows:
            result["bambulabs_api"].append(bambulabs_api_case(row))
        result["camera"] = []
        for row in rows:
            if row["model"] in CHAMBER_IMAGE:
                try:
                    result["camera"].append(camera_case(row))
                except Failure:
                    raise
                except Exception as e:
                    raise Failure(f"{row['model']}: bambulabs-api camera raised {type(e).__name__}: {e}") from e
        for row in rows:
            if row["model"] in ("P1S", "A1"):
                import bambulabs_api as bl

                name = f"bc-{row['model'].lower()}.gcode.3mf"
                up = bl.Printer(row["host"], row["code"], row["serial"]).upload_file(
                    io.BytesIO(sliced_3mf(MODEL_CODES[row["model"]], 7200)), name)
                check(isinstance(up, str) and up.startswith("226"), f"upload for bambu-connect: {up!r}")
                try:
                    result["bambu_connect"].append(bambu_connect_case(row, name))
                except Failure:
                    raise
                except Exception as e:
                    raise Failure(f"{row['model']}: bambu-connect raised {type(e).__name__}: {e}") from e
    except Failure as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
