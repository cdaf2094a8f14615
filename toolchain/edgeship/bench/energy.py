"""Energy per inference, in millijoules, with the method written next to the figure.

    source = power_source(device, power_cmd=None)       # what this device can measure, or why not
    sampler = EnergySampler(source)
    with sampler:                                       # starts sampling (a streaming process)
        sampler.measure_idle(2.0)                       # idle baseline, just before the run
        with sampler.window():                          # the run
            device.run([...bench...], timeout_s=600)
    result = sampler.result(inferences=warmup + runs)   # EnergyResult; .available False -> .reason says why

How samples are taken: one long-running shell loop per measurement, started with ``device.stream``
(``adb shell`` / ``ssh`` / a local process), prints one sample per line every ``interval_s``; a host
thread reads the lines and stamps them with the host's monotonic clock. One connection for the whole
run (no per-sample round trip, which would cost 20-100 ms and energy on the device), and sample times
share a clock with the host's idle/run marks. The loop ends itself after ``max_s`` even if the host
vanishes.

Sources (the first that applies; ``--power-cmd`` always wins):

* ``android-battery`` (adb): battery ``current_now`` × ``voltage_now`` from
  /sys/class/power_supply/battery (``dumpsys battery``'s "current now"/"voltage" when sysfs is not
  readable). Refused while the device is charging or powered over USB/AC: the gauge then shows the
  charger's flow, not the SoC's draw — unplug and use adb over Wi-Fi, or an external meter.
  Units and signs differ between vendors; see :func:`battery_watts` for the heuristics.
* ``rpi5-pmic`` (ssh): ``vcgencmd pmic_read_adc`` (Raspberry Pi 5): every rail with both a current
  (``NAME_A current(n)=0.123A``) and a voltage (``NAME_V volt(m)=0.88V``) line contributes A × V;
  ``EXT5V_V``/``BATT_V`` have no current and are skipped. This is the board's PMIC rails only: USB/PCIe
  peripherals and the 5 V input's conversion losses are not included. Needs the user in the ``video``
  group. See :func:`pmic_rails`.
* ``external-meter`` (any device): ``--power-cmd "CMD"`` runs CMD on the host with ``sh -c``; every
  line it prints starts with watts. A command that prints one value and exits is re-run every
  ``interval_s``; one that keeps printing is read as a stream.

Where none applies the result says "not available" and why — never an estimate. The arithmetic is in
pure functions (:func:`integrate`, :func:`mean_power`, :func:`energy_per_inference_mj`).
"""
from __future__ import annotations

import logging
import math
import re
import shlex
import statistics
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

from edgeship.errors import EdgeshipError

log = logging.getLogger(__name__)

__all__ = ["EnergyResult", "EnergySampler", "PowerSource", "AndroidBatterySource", "PiPmicSource",
           "ExternalMeterSource", "Unavailable", "power_source", "integrate", "mean_power",
           "energy_per_inference_mj", "battery_watts", "pmic_rails", "pmic_watts", "redact_command"]

MIN_WINDOW_SAMPLES = 3

# --------------------------------------------------------------------------------------------- pure maths


def _points_in(t: Sequence[float], w: Sequence[float], t0: float, t1: float) -> tuple[list[float], list[float]]:
    """Samples inside [t0, t1] plus linearly interpolated end points (held flat beyond the first/last sample)."""
    if len(t) != len(w):
        raise ValueError("t and w differ in length")
    if not t:
        raise ValueError("empty trace")
    if t1 < t0:
        raise ValueError("window ends before it starts")
    if any(b < a for a, b in zip(t, t[1:])):
        raise ValueError("sample times must not decrease")

    def at(x: float) -> float:
        if x <= t[0]:
            return w[0]
        if x >= t[-1]:
            return w[-1]
        lo, hi = 0, len(t) - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if t[mid] <= x:
                lo = mid
            else:
                hi = mid
        if t[hi] == t[lo]:
            return w[hi]
        return w[lo] + (w[hi] - w[lo]) * (x - t[lo]) / (t[hi] - t[lo])

    ts = [t0] + [x for x in t if t0 < x < t1] + [t1]
    ws = [at(t0)] + [y for x, y in zip(t, w) if t0 < x < t1] + [at(t1)]
    return ts, ws


def integrate(t: Sequence[float], w: Sequence[float], t0: float | None = None, t1: float | None = None) -> float:
    """Energy in joules of a power trace (seconds, watts) over [t0, t1] (default: the whole trace), trapezoids."""
    t0 = t[0] if t0 is None else t0
    t1 = t[-1] if t1 is None else t1
    ts, ws = _points_in(t, w, t0, t1)
    return sum((ts[i + 1] - ts[i]) * (ws[i] + ws[i + 1]) / 2 for i in range(len(ts) - 1))


def mean_power(t: Sequence[float], w: Sequence[float], t0: float, t1: float) -> float:
    """Time-weighted mean power in watts over [t0, t1]."""
    if t1 <= t0:
        raise ValueError("empty window")
    return integrate(t, w, t0, t1) / (t1 - t0)


def energy_per_inference_mj(t: Sequence[float], w: Sequence[float], window: tuple[float, float], idle_w: float,
                            inferences: int) -> float:
    """(energy over the window − idle power × its length) / inferences, in millijoules."""
    if inferences <= 0:
        raise ValueError("inferences must be positive")
    t0, t1 = window
    excess_j = integrate(t, w, t0, t1) - idle_w * (t1 - t0)
    return excess_j / inferences * 1000.0


def battery_watts(current_raw: Sequence[float], voltage_raw: Sequence[float]) -> tuple[list[float], list[str]]:
    """Battery discharge power per sample (watts) from raw fuel-gauge readings, and notes on what was assumed.

    Heuristics (vendors differ; the kernel ABI says µA and µV but not every driver follows it):

    * current unit from the median magnitude: >= 10,000 -> µA, else mA. A phone running a model draws
      50 mA - 5 A: 50,000 - 5,000,000 in µA, 50 - 5,000 in mA; the ranges do not meet.
    * voltage unit from the median: > 100,000 -> µV, > 100 -> mV, else V (a Li-ion cell sits at 3-4.5 V).
    * sign: Android's BatteryManager says negative = discharging, many sysfs drivers report discharge as
      positive. We only measure while not charging, so the sign of the median is "discharging"; samples of
      the other sign count as negative draw (a brief net inflow), rather than being folded with abs().
    """
    if len(current_raw) != len(voltage_raw) or not current_raw:
        raise ValueError("need as many current as voltage samples, at least one")
    notes = []
    i_med = statistics.median(abs(x) for x in current_raw)
    if i_med >= 10_000:
        i_scale, i_unit = 1e-6, "µA"
    else:
        i_scale, i_unit = 1e-3, "mA"
    sign = -1.0 if statistics.median(current_raw) < 0 else 1.0
    notes.append(f"current read as {i_unit} (median |I| {i_med:g}); discharge reported as "
                 f"{'negative' if sign < 0 else 'positive'}")
    v_med = statistics.median(abs(x) for x in voltage_raw)
    if v_med > 100_000:
        v_scale, v_unit = 1e-6, "µV"
    elif v_med > 100:
        v_scale, v_unit = 1e-3, "mV"
    else:
        v_scale, v_unit = 1.0, "V"
    notes.append(f"voltage read as {v_unit} (median {v_med:g})")
    watts = [sign * i * i_scale * abs(v) * v_scale for i, v in zip(current_raw, voltage_raw)]
    return watts, notes


_PMIC_LINE = re.compile(r"^\s*(?P<rail>\S+?)_(?P<kind>[AV])\s+(?:current|volt)\(\d+\)=(?P<value>[-+0-9.eE]+|nan)[AV]\s*$")


def pmic_rails(text: str) -> dict[str, tuple[float, float]]:
    """{rail: (amps, volts)} for rails with both a current and a voltage line in ``vcgencmd pmic_read_adc`` output.

    The Raspberry Pi 5's output has one line per channel, e.g.::

         3V7_WL_SW_A current(0)=0.00780744A
          VDD_CORE_A current(7)=0.75012000A
         3V7_WL_SW_V volt(8)=3.74926800V
          VDD_CORE_V volt(15)=0.88000000V
             EXT5V_V volt(24)=5.11088000V

    The channel numbers of a rail's current and voltage differ, so rails pair by name. Non-numbers
    (``nanV``) are dropped.
    """
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in text.splitlines():
        m = _PMIC_LINE.match(line)
        if not m:
            continue
        try:
            value = float(m.group("value"))
        except ValueError:
            continue
        if math.isnan(value):
            continue
        (amps if m.group("kind") == "A" else volts)[m.group("rail")] = value
    return {r: (amps[r], volts[r]) for r in sorted(amps) if r in volts}


def pmic_watts(text: str) -> float | None:
    """Total watts over the paired PMIC rails, None when the text has none."""
    rails = pmic_rails(text)
    return sum(a * v for a, v in rails.values()) if rails else None


# --------------------------------------------------------------------------------------------- result


@dataclass
class EnergyResult:
    available: bool
    method: str                          # android-battery | rpi5-pmic | external-meter | none
    method_detail: str                   # how the figure was obtained, in words
    mj_per_inference: float | None = None
    reason: str | None = None            # why there is no figure
    inferences: int | None = None
    idle_w: float | None = None          # mean power during the idle baseline
    active_w: float | None = None        # mean power during the run window
    window_s: float | None = None
    excess_j: float | None = None        # energy above idle over the window
    samples: int = 0                     # samples inside the run window
    interval_s: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------- sources


class PowerSource:
    """Where samples come from. Subclasses define the sampling loop and how to turn lines into watts."""
    method = "none"
    detail = ""
    RECHECK_S = 60.0
    _checked: tuple[float, str | None] | None = None

    def unavailable_reason(self) -> str | None:
        """None when the sensor works now, else why not. One device round trip; the answer is kept for
        RECHECK_S seconds (a phone may be plugged in between runs)."""
        now = time.monotonic()
        if self._checked is None or now - self._checked[0] > self.RECHECK_S:
            self._checked = (now, self._probe())
        return self._checked[1]

    def _probe(self) -> str | None:
        return None

    def start(self, interval_s: float, max_s: float) -> subprocess.Popen:
        raise NotImplementedError

    def parse(self, line: str) -> Any:
        """One line of the loop's output -> a raw sample, or None for lines that are not samples."""
        raise NotImplementedError

    def to_watts(self, raw: list[Any]) -> tuple[list[float], list[str]]:
        return [float(x) for x in raw], []

    @property
    def restart(self) -> bool:
        """Re-run the command when it exits (one-shot meters)."""
        return False


class Unavailable(PowerSource):
    method = "none"
    detail = "no power sensor"

    def __init__(self, reason: str):
        self.reason = reason

    def _probe(self) -> str | None:
        return self.reason


class AndroidBatterySource(PowerSource):
    method = "android-battery"
    detail = ("battery fuel gauge: current_now × voltage_now sampled during the run, minus the idle baseline "
              "measured just before it")
    SYSFS = "/sys/class/power_supply/battery"

    def __init__(self, device: Any):
        self.device = device
        self.mode = "sysfs"

    def _probe(self) -> str | None:
        d = self.SYSFS
        script = (f"echo status=$(cat {d}/status 2>/dev/null); echo current=$(cat {d}/current_now 2>/dev/null); "
                  f"echo voltage=$(cat {d}/voltage_now 2>/dev/null); dumpsys battery 2>/dev/null")
        cp = self.device.run(["sh", "-c", script], 30)
        sysfs: dict[str, str] = {}
        dumpsys: dict[str, str] = {}
        for line in cp.stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep and key in ("status", "current", "voltage"):
                sysfs[key] = value.strip()
                continue
            key, sep, value = line.partition(":")
            if sep:
                dumpsys.setdefault(key.strip().lower(), value.strip())
        status = sysfs.get("status", "")
        if status in ("Charging", "Full"):
            return (f"{self.device.id} is charging (battery status {status}): the fuel gauge then shows the "
                    "charger's current, not the SoC's draw; unplug it and use adb over Wi-Fi "
                    "(adb tcpip 5555; adb connect PHONE:5555), or measure with --power-cmd and an external meter")
        powered = [k for k in ("ac powered", "usb powered", "wireless powered") if dumpsys.get(k) == "true"]
        if powered:
            return (f"{self.device.id} is externally powered ({', '.join(powered)}): battery current does not show "
                    "the SoC's draw; unplug it and use adb over Wi-Fi, or --power-cmd with an external meter")
        if _is_number(sysfs.get("current", "")) and _is_number(sysfs.get("voltage", "")):
            self.mode = "sysfs"
        elif _is_number(dumpsys.get("current now", "")) and _is_number(dumpsys.get("voltage", "")):
            self.mode = "dumpsys"
        else:
            return (f"no readable battery current and voltage on {self.device.id}: {d}/current_now and voltage_now "
                    "are missing or not readable by the shell user, and `dumpsys battery` has no 'current now'")
        return None

    def start(self, interval_s: float, max_s: float) -> subprocess.Popen:
        d, n = self.SYSFS, max(1, int(max_s / interval_s))
        if self.mode == "sysfs":  # `read` is a shell builtin: no process per sample
            body = f"read c < {d}/current_now; read v < {d}/voltage_now; echo \"S $c $v\""
        else:
            body = ("echo \"S $(dumpsys battery | sed -n 's/^ *[Cc]urrent now: *//p') "
                    "$(dumpsys battery | sed -n 's/^ *voltage: *//p')\"")
        loop = f"i=0; while [ $i -lt {n} ]; do {body}; sleep {interval_s:g}; i=$((i+1)); done"
        return self.device.stream(["sh", "-c", loop])

    def parse(self, line: str) -> Any:
        parts = line.split()
        if len(parts) == 3 and parts[0] == "S" and _is_number(parts[1]) and _is_number(parts[2]):
            return float(parts[1]), float(parts[2])
        return None

    def to_watts(self, raw: list[Any]) -> tuple[list[float], list[str]]:
        watts, notes = battery_watts([c for c, _ in raw], [v for _, v in raw])
        if self.mode == "dumpsys":
            notes.append("read through dumpsys battery (sysfs current_now not readable)")
        return watts, notes


class PiPmicSource(PowerSource):
    method = "rpi5-pmic"
    detail = ("Raspberry Pi 5 PMIC: vcgencmd pmic_read_adc, sum of rail current × voltage, sampled during the run, "
              "minus the idle baseline; board rails only (excludes USB/PCIe peripherals and 5 V input losses)")

    def __init__(self, device: Any, vcgencmd: str = "vcgencmd"):
        self.device, self.vcgencmd = device, vcgencmd

    def _probe(self) -> str | None:
        cp = self.device.run(["sh", "-c", f"{shlex.quote(self.vcgencmd)} pmic_read_adc 2>&1"], 30)
        if cp.returncode == 127 or "not found" in cp.stdout:
            return f"{self.device.id} has no vcgencmd (not a Raspberry Pi, or raspi-utils is not installed)"
        if cp.returncode != 0 or pmic_watts(cp.stdout) is None:
            tail = cp.stdout.strip().splitlines()[-1:] or [f"exit status {cp.returncode}"]
            return (f"vcgencmd pmic_read_adc gives no rail readings on {self.device.id} (only the Raspberry Pi 5 "
                    f"has this PMIC ADC; the user must be in the 'video' group): {tail[0]}")
        return None

    def start(self, interval_s: float, max_s: float) -> subprocess.Popen:
        n = max(1, int(max_s / interval_s))
        loop = (f"i=0; while [ $i -lt {n} ]; do {shlex.quote(self.vcgencmd)} pmic_read_adc | tr '\\n' '|'; echo; "
                f"sleep {interval_s:g}; i=$((i+1)); done")
        return self.device.stream(["sh", "-c", loop])

    def parse(self, line: str) -> Any:
        return pmic_watts(line.replace("|", "\n"))


_PROGRAM = re.compile(r"^[A-Za-z0-9._+-]{1,64}$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def redact_command(command: str) -> str:
    """``--power-cmd`` as it may be stored (report.json, report.html, --json output, logs): the program's name and
    how many arguments followed it, never the arguments themselves.

    The rule: the command is split into shell words; leading ``VAR=value`` assignments are skipped; the first other
    word, reduced to its base name, is kept if it is a plain name (letters, digits, ``._+-``); every other word,
    assignments included, is counted, not shown::

        curl -s -H 'Authorization: Bearer abc' http://meter/watts   ->  curl <redacted 4 args>
        TOKEN=abc /opt/bin/read-watts --key=xyz                      ->  read-watts <redacted 2 args>
        read-watts                                                   ->  read-watts

    No heuristic guesses which argument is secret: a header, a URL's query, ``--password x`` or a pipeline's later
    commands may each carry one, and a report only needs to say which meter was used. A command that does not split
    (an unbalanced quote) or whose program is not a plain name is stored as ``<redacted command>``.
    """
    try:
        words = shlex.split(command)
    except ValueError:
        return "<redacted command>"
    i = 0
    while i < len(words) and _ASSIGNMENT.match(words[i]):
        i += 1
    if i == len(words):
        return "<redacted command>"
    program = words[i].rsplit("/", 1)[-1]
    if not _PROGRAM.match(program):
        return "<redacted command>"
    n = len(words) - 1
    return program if n == 0 else f"{program} <redacted {n} arg{'s' if n != 1 else ''}>"


class ExternalMeterSource(PowerSource):
    method = "external-meter"

    def __init__(self, command: str):
        if not command.strip():
            raise EdgeshipError("--power-cmd is empty", hint='--power-cmd "my-meter --watts"')
        self.command = command
        self.detail = (f"external meter: `{redact_command(command)}` (--power-cmd, its arguments redacted; watts, on "
                       "the host) sampled during the run, minus the idle baseline")
        self._oneshot = False

    def _probe(self) -> str | None:
        try:
            proc = subprocess.Popen(["sh", "-c", self.command], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        except OSError as e:
            return f"--power-cmd cannot start: {e}"
        try:
            line = proc.stdout.readline() if proc.stdout else ""
        finally:
            try:
                proc.wait(0.2)
                self._oneshot = True
            except subprocess.TimeoutExpired:
                _stop(proc)
        if self.parse(line) is None:
            err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
            return f"--power-cmd printed no watts (first line {line.strip()!r}) {err.strip()[-200:]}".strip()
        return None

    @property
    def restart(self) -> bool:
        return self._oneshot

    def start(self, interval_s: float, max_s: float) -> subprocess.Popen:
        return subprocess.Popen(["sh", "-c", self.command], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True, bufsize=1, start_new_session=True)

    def parse(self, line: str) -> Any:
        m = re.match(r"\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)", line)
        return float(m.group(1)) if m else None


def power_source(device: Any, power_cmd: str | None = None, info: Any = None) -> PowerSource:
    """The power source for a device: --power-cmd if given, else the device's own capability
    (``device.power_source(info)``: a phone's fuel gauge, a Raspberry Pi's PMIC; ``info``, its DeviceInfo when known,
    lets it decide by what the device is), else none."""
    if power_cmd:
        return ExternalMeterSource(power_cmd)
    own = getattr(device, "power_source", None)
    if callable(own):
        return own(info)
    return Unavailable(f"{getattr(device, 'id', 'the device')} has no power sensor edgeship can read; "
                       "measure with an external meter: --power-cmd \"CMD\" (prints watts)")


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------------------------- sampler


class EnergySampler:
    """Samples a PowerSource in the background; marks an idle window and a run window; computes the result."""

    def __init__(self, source: PowerSource, *, interval_s: float = 0.1, max_s: float = 3600.0):
        self.source, self.interval_s, self.max_s = source, interval_s, max_s
        self._t: list[float] = []
        self._raw: list[Any] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None
        self._stderr = ""
        self.reason: str | None = None
        self.idle: tuple[float, float] | None = None
        self.run_window: tuple[float, float] | None = None

    def __enter__(self) -> "EnergySampler":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.reason = self.source.unavailable_reason()
        if self.reason:
            log.info("energy: not measured: %s", self.reason)
            return
        self._thread = threading.Thread(target=self._loop, name="edgeship-energy", daemon=True)
        self._thread.start()
        if not self._wait_samples(1, timeout=max(10.0, 20 * self.interval_s)):
            self.stop()
            self.reason = f"the power sampler produced no samples: {self._stderr.strip()[-300:] or 'no output'}"

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                proc = self._proc = self.source.start(self.interval_s, self.max_s)
            except (OSError, EdgeshipError) as e:
                self._stderr = str(e)
                return
            assert proc.stdout is not None
            for line in proc.stdout:
                now = time.monotonic()
                sample = self.source.parse(line)
                if sample is not None:
                    with self._lock:
                        self._t.append(now)
                        self._raw.append(sample)
                if self._stop.is_set():
                    break
            _stop(proc)
            if proc.stderr is not None:
                try:
                    self._stderr = proc.stderr.read()[-2000:]
                except (OSError, ValueError):
                    pass
            if not self.source.restart:
                return
            self._stop.wait(self.interval_s)

    def _wait_samples(self, n: int, timeout: float, after: float | None = None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                count = sum(1 for x in self._t if after is None or x > after)
            if count >= n:
                return True
            if self._thread is not None and not self._thread.is_alive():
                return False
            time.sleep(min(0.02, self.interval_s / 2))
        return False

    def stop(self) -> None:
        self._stop.set()
        if self._proc is not None:
            _stop(self._proc)
        if self._thread is not None:
            self._thread.join(10)

    @property
    def available(self) -> bool:
        return self.reason is None

    def measure_idle(self, seconds: float = 2.0) -> None:
        """Sit idle for ``seconds`` and mark that window as the baseline."""
        if not self.available:
            return
        t0 = time.monotonic()
        time.sleep(seconds)
        self.idle = (t0, time.monotonic())

    @contextmanager
    def window(self) -> Iterator[None]:
        """Mark the run: the body's start and end on the host clock; waits for one sample past the end."""
        t0 = time.monotonic()
        try:
            yield
        finally:
            t1 = time.monotonic()
            self.run_window = (t0, t1)
            if self.available:
                self._wait_samples(1, timeout=max(2.0, 10 * self.interval_s), after=t1)

    def trace(self) -> tuple[list[float], list[float], list[str]]:
        """(times, watts, notes) of everything sampled so far."""
        with self._lock:
            t, raw = list(self._t), list(self._raw)
        if not raw:
            return [], [], []
        w, notes = self.source.to_watts(raw)
        return t, w, notes

    def result(self, inferences: int, window: tuple[float, float] | None = None) -> EnergyResult:
        """Energy per inference over the run window (or ``window``), minus the idle baseline."""
        base = EnergyResult(available=False, method=self.source.method, method_detail=self.source.detail,
                            inferences=inferences, interval_s=self.interval_s)
        if not self.available:
            base.method = "none" if isinstance(self.source, Unavailable) else base.method
            base.reason = self.reason
            return base
        window = window or self.run_window
        if window is None or self.idle is None:
            base.reason = "no idle baseline or run window was marked (measure_idle(), window())"
            return base
        if inferences <= 0:
            base.reason = "no inferences were counted"
            return base
        t, w, notes = self.trace()
        base.notes = notes
        in_window = [x for x in t if window[0] <= x <= window[1]]
        in_idle = [x for x in t if self.idle[0] <= x <= self.idle[1]]
        base.samples = len(in_window)
        if not t or t[-1] < window[1] - 2 * self.interval_s - 0.5:
            base.reason = f"sampling stopped before the run ended: {self._stderr.strip()[-300:] or 'no output'}"
            return base
        if len(in_window) < MIN_WINDOW_SAMPLES:
            base.reason = (f"the run lasted {window[1] - window[0]:.2f} s, only {len(in_window)} power samples "
                           f"(need {MIN_WINDOW_SAMPLES}); run more inferences")
            return base
        if len(in_idle) < 2:
            base.reason = f"only {len(in_idle)} samples during the idle baseline; lengthen it"
            return base
        # baseline from the samples inside the idle window only: interpolating at its end would lean on the
        # first sample of the run, which follows at once
        idle_w = mean_power(t, w, in_idle[0], in_idle[-1])
        active_w = mean_power(t, w, *window)
        base.available = True
        base.idle_w, base.active_w = idle_w, active_w
        base.window_s = window[1] - window[0]
        base.excess_j = (active_w - idle_w) * base.window_s
        base.mj_per_inference = energy_per_inference_mj(t, w, window, idle_w, inferences)
        distinct = len(set(w[i] for i, x in enumerate(t) if window[0] <= x <= window[1]))
        if distinct < 3:
            base.notes.append(f"the sensor reported only {distinct} distinct values during the run: it may update "
                              "slower than it is sampled; prefer longer runs")
        if active_w <= idle_w:
            base.notes.append("run power was not above idle: the figure is within the sensor's noise")
        return base
