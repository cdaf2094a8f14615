"""Energy: the arithmetic on recorded traces with known answers, then sampling through real adb / ssh / a meter."""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the `support` fixtures

from edgeship.bench.devices import LocalDevice, SshDevice  # noqa: E402
from edgeship.bench.energy import (AndroidBatterySource, EnergySampler, ExternalMeterSource,  # noqa: E402
                                   PiPmicSource, Unavailable, battery_watts, energy_per_inference_mj, integrate,
                                   mean_power, pmic_rails, pmic_watts, power_source, redact_command)
from edgeship.errors import EdgeshipError  # noqa: E402
from support.adb import AdbLab, adb_lab  # noqa: E402,F401  (fixture)
from support.sshd import SshServer, sshd  # noqa: E402,F401  (fixture)

# `vcgencmd pmic_read_adc` on a Raspberry Pi 5, in the firmware's format: NAME_A current(n)=...A lines,
# then NAME_V volt(m)=...V lines; EXT5V and BATT have a voltage only.
PMIC_SAMPLE = """\
 3V7_WL_SW_A current(0)=0.01025640A
   3V3_SYS_A current(1)=0.06349200A
   1V8_SYS_A current(2)=0.19438380A
  DDR_VDD2_A current(3)=0.01953120A
  DDR_VDDQ_A current(4)=0.00000000A
   1V1_SYS_A current(5)=0.17094000A
    0V8_SW_A current(6)=0.30061050A
  VDD_CORE_A current(7)={core}A
   3V3_DAC_A current(17)=0.00012210A
   3V3_ADC_A current(18)=0.00030525A
   0V8_AON_A current(16)=0.00366300A
      HDMI_A current(22)=0.02222220A
 3V7_WL_SW_V volt(8)=3.73608000V
   3V3_SYS_V volt(9)=3.31245600V
   1V8_SYS_V volt(10)=1.80073200V
  DDR_VDD2_V volt(11)=1.10402900V
  DDR_VDDQ_V volt(12)=0.60073260V
   1V1_SYS_V volt(13)=1.10329700V
    0V8_SW_V volt(14)=0.80146520V
  VDD_CORE_V volt(15)=0.88000000V
   3V3_DAC_V volt(20)=3.30952300V
   3V3_ADC_V volt(21)=3.30879100V
   0V8_AON_V volt(19)=0.80000000V
      HDMI_V volt(23)=5.13644700V
     EXT5V_V volt(24)=5.10622700V
      BATT_V volt(25)=nanV
"""
PMIC_IDLE_W = (0.01025640 * 3.73608 + 0.06349200 * 3.312456 + 0.19438380 * 1.800732 + 0.01953120 * 1.104029
               + 0.0 * 0.6007326 + 0.17094 * 1.103297 + 0.3006105 * 0.8014652 + 0.624 * 0.88
               + 0.0001221 * 3.309523 + 0.00030525 * 3.308791 + 0.003663 * 0.8 + 0.0222222 * 5.136447)


# ------------------------------------------------------------------------------------------ pure maths

def test_integrate_known_shapes():
    t = [0.0, 1.0, 2.0, 3.0]
    assert integrate(t, [2.0, 2.0, 2.0, 2.0]) == pytest.approx(6.0)
    assert integrate(t, [0.0, 1.0, 2.0, 3.0]) == pytest.approx(4.5)                 # ramp: area of a triangle
    assert integrate(t, [0.0, 1.0, 2.0, 3.0], 0.5, 2.5) == pytest.approx(3.0)       # interpolated ends
    assert integrate([0.0, 0.1, 0.4, 1.0], [1.0, 3.0, 3.0, 1.0]) == pytest.approx(0.2 + 0.9 + 1.2)  # uneven steps
    assert integrate(t, [1.0, 1.0, 1.0, 1.0], -1.0, 5.0) == pytest.approx(6.0)      # held flat past the ends
    assert mean_power(t, [0.0, 1.0, 2.0, 3.0], 1.0, 3.0) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        integrate([0.0, 2.0, 1.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError):
        mean_power(t, [1.0] * 4, 2.0, 2.0)


def test_energy_per_inference_on_a_recorded_step_trace():
    # 10 Hz samples: 2 W idle, 5 W from t=10 s to t=20 s (exclusive), 100 inferences in [10, 20]
    t = [i / 10 for i in range(300)]
    w = [5.0 if 100 <= i < 200 else 2.0 for i in range(300)]
    # inside [10, 20]: 99 segments at 5 W (9.9 J... ) + the last one (5+2)/2 over 0.1 s = 49.5 + 0.35 J
    assert integrate(t, w, 10.0, 20.0) == pytest.approx(49.85)
    assert energy_per_inference_mj(t, w, (10.0, 20.0), idle_w=2.0, inferences=100) == pytest.approx(298.5)
    idle = mean_power(t, w, 2.0, 9.0)
    assert idle == pytest.approx(2.0)
    with pytest.raises(ValueError):
        energy_per_inference_mj(t, w, (10.0, 20.0), idle_w=2.0, inferences=0)


def test_battery_units_and_signs():
    # Pixel-like: µA, negative while discharging, µV
    w, notes = battery_watts([-350_000, -1_350_000], [3_850_000, 3_840_000])
    assert w == pytest.approx([0.35 * 3.85, 1.35 * 3.84])
    assert "µA" in notes[0] and "negative" in notes[0] and "µV" in notes[1]
    # many Qualcomm kernels: µA, positive while discharging
    assert battery_watts([350_000], [3_850_000])[0] == pytest.approx([0.35 * 3.85])
    # some vendors: mA and mV (as `dumpsys battery` prints voltage)
    w, notes = battery_watts([-420, -380, 12], [3850, 3851, 3849])
    assert w == pytest.approx([0.42 * 3.85, 0.38 * 3.851, -0.012 * 3.849])   # a brief inflow counts negative
    assert "mA" in notes[0] and "mV" in notes[1]
    assert battery_watts([500], [4.2])[0] == pytest.approx([0.5 * 4.2])       # volts as volts
    with pytest.raises(ValueError):
        battery_watts([1, 2], [3])


def test_pmic_parser_on_recorded_output():
    text = PMIC_SAMPLE.format(core="0.62400000")
    rails = pmic_rails(text)
    assert len(rails) == 12 and "EXT5V" not in rails and "BATT" not in rails
    assert rails["VDD_CORE"] == (0.624, 0.88)
    assert pmic_watts(text) == pytest.approx(PMIC_IDLE_W)
    assert pmic_watts(text.replace("\n", "|").replace("|", "\n")) == pytest.approx(PMIC_IDLE_W)
    assert pmic_watts("") is None and pmic_watts("error=1 error_msg=\"Command not registered\"") is None


def test_external_meter_line_parsing():
    src = ExternalMeterSource("true")
    assert src.parse("4.25\n") == 4.25 and src.parse(" 12 W") == 12.0 and src.parse("1.5e1") == 15.0
    assert src.parse("watts: 3") is None and src.parse("") is None
    with pytest.raises(EdgeshipError):
        ExternalMeterSource("  ")


# ------------------------------------------------------------------------------------------ sampling

def _measure(source, run, inferences, interval_s=0.05, idle_s=1.0):
    sampler = EnergySampler(source, interval_s=interval_s)
    with sampler:
        sampler.measure_idle(idle_s)
        with sampler.window():
            run()
    return sampler.result(inferences=inferences)


def test_no_sensor_says_why():
    source = power_source(LocalDevice())
    assert isinstance(source, Unavailable)
    res = _measure(source, lambda: None, 10)
    assert not res.available and res.mj_per_inference is None and res.method == "none"
    assert "--power-cmd" in res.reason


@pytest.mark.parametrize("streaming", [False, True], ids=["one-shot", "streaming"])
def test_external_meter(tmp_path: Path, streaming: bool):
    watts = tmp_path / "watts"
    watts.write_text("2.5\n")
    if streaming:
        cmd = f"while :; do cat {watts}; sleep 0.05; done"
    else:
        cmd = f"cat {watts}"
    source = power_source(LocalDevice(), power_cmd=cmd)
    assert isinstance(source, ExternalMeterSource)

    def run():
        watts.write_text("7.5\n")
        LocalDevice().run(["sleep", "1.2"], 10)
        watts.write_text("2.5\n")
    res = _measure(source, run, inferences=12)
    assert source.restart is (not streaming)
    assert res.available, res.reason
    assert res.method == "external-meter" and redact_command(cmd) in res.method_detail
    assert str(watts) not in res.method_detail              # the command's arguments are never stored
    assert res.idle_w == pytest.approx(2.5, abs=0.01)
    assert res.samples >= 10
    # 5 W above idle for 1.2 s over 12 inferences = 500 mJ, give or take one sample interval at each edge
    assert res.mj_per_inference == pytest.approx(500, rel=0.15)


@pytest.mark.parametrize("cmd,stored", [
    ("curl -s -H 'Authorization: Bearer abc123' https://meter.lan/watts", "curl <redacted 4 args>"),
    ("TOKEN=abc123 /opt/meter/read-watts --key=abc123", "read-watts <redacted 2 args>"),
    ("read-watts", "read-watts"),
    ("meter --password=abc123", "meter <redacted 1 arg>"),
    ("meter 'abc123", "<redacted command>"),                  # does not split into words
    ("$(cat /run/abc123) --watts", "<redacted command>"),     # no plain program name
    ("API_KEY=abc123", "<redacted command>"),
])
def test_power_cmd_is_redacted(cmd: str, stored: str):
    """What report.json keeps of --power-cmd: the program's name and an argument count, never an argument."""
    assert redact_command(cmd) == stored
    assert "abc123" not in ExternalMeterSource(cmd).detail


def test_too_short_a_run_is_not_a_figure(tmp_path: Path):
    watts = tmp_path / "watts"
    watts.write_text("3\n")
    res = _measure(power_source(LocalDevice(), power_cmd=f"cat {watts}"), lambda: None, inferences=1,
                   interval_s=0.2, idle_s=0.6)
    assert not res.available and "run more inferences" in res.reason


def test_android_battery_through_real_adb(adb_lab: AdbLab):
    fake, dev = adb_lab.add_device()
    fake.set_battery(current_now=-350000, voltage_now=3850000, status="Discharging")
    source = power_source(dev)
    assert isinstance(source, AndroidBatterySource)
    bat = "/sys/class/power_supply/battery/current_now"

    def run():  # the "benchmark": draws 1 A more for 1.5 s, on the device
        dev.run(["sh", "-c", f"echo -1350000 > {bat}; sleep 1.5; echo -350000 > {bat}"], 30, check=True)
    res = _measure(source, run, inferences=15)
    assert res.available, res.reason
    assert res.method == "android-battery" and "current_now" in res.method_detail
    assert res.idle_w == pytest.approx(0.35 * 3.85, rel=0.01)
    assert res.active_w > res.idle_w
    # 1.0 A × 3.85 V × 1.5 s / 15 = 385 mJ per inference
    assert res.mj_per_inference == pytest.approx(385, rel=0.15)
    assert any("µA" in n for n in res.notes)


def test_android_battery_refuses_while_charging_or_without_sensor(adb_lab: AdbLab):
    fake, dev = adb_lab.add_device()
    fake.set_battery(status="Charging")
    res = _measure(AndroidBatterySource(dev), lambda: None, 10)
    assert not res.available and res.mj_per_inference is None and "charging" in res.reason
    assert "adb connect" in res.reason

    fake.set_battery(status="Discharging")
    (fake.root / "sys/class/power_supply/battery/current_now").unlink()
    res = _measure(AndroidBatterySource(dev), lambda: None, 10)
    assert not res.available and "current_now" in res.reason


@pytest.mark.slow
def test_pi5_pmic_over_ssh(sshd: SshServer, tmp_path: Path):
    """PMIC sampling over a real ssh connection; vcgencmd is a script printing the Pi 5's format."""
    core = tmp_path / "core_a"
    core.write_text("0.62400000\n")
    vcgencmd = tmp_path / "vcgencmd"
    vcgencmd.write_text('#!/bin/sh\n[ "$1" = pmic_read_adc ] || exit 1\ncore=$(cat %s)\ncat <<EOF\n%sEOF\n'
                        % (core, PMIC_SAMPLE.format(core="${core}")))
    vcgencmd.chmod(0o755)
    dev = SshDevice(sshd.url(), ssh_config=sshd.config)
    assert isinstance(power_source(dev), PiPmicSource)
    res_none = _measure(power_source(dev), lambda: None, 10)          # this "board" has no vcgencmd
    assert not res_none.available and "no vcgencmd" in res_none.reason

    def run():
        core.write_text("2.62400000\n")
        LocalDevice().run(["sleep", "1.5"], 10)   # same host: the "board" draws 2 A more on VDD_CORE
        core.write_text("0.62400000\n")
    res = _measure(PiPmicSource(dev, vcgencmd=str(vcgencmd)), run, inferences=10, interval_s=0.1)
    assert res.available, res.reason
    assert res.method == "rpi5-pmic" and "excludes USB" in res.method_detail
    assert res.idle_w == pytest.approx(PMIC_IDLE_W, rel=0.01)
    # 2 A × 0.88 V × 1.5 s / 10 = 264 mJ
    assert res.mj_per_inference == pytest.approx(264, rel=0.15)
    assert math.isfinite(res.active_w) and os.path.exists(vcgencmd)
