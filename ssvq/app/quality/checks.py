"""Bit-exactness checks of exported images: the v2 stream round trip
(ssvq.reference outputs) and the generated Verilog against the golden model."""
from __future__ import annotations

from pathlib import Path

from compress.calib import act_params, quantize_act
from compress.run import accel_config_for
from ssvq.app.quality.runtime import say
from ssvq.image import pack_layer, unpack_layer
from ssvq.reference import outputs


def check_images(imgs, calib: dict | None = None) -> bool:
    """Every exported image, packed into its v2 stream (the covering accelerator
    config) and decoded again, gives the same integer outputs (ssvq.reference) on
    its own activation and on up to 64 calibration activations."""
    cfg = accel_config_for([(im.name, im.config, im.rows, im.cols) for im in imgs])
    ok = True
    for im in imgs:
        dec = unpack_layer(pack_layer(im, cfg)[0], cfg, im.name)
        acts = [im.act]
        if calib is not None and im.name in calib:
            acts.append(quantize_act(calib[im.name][:64], *act_params(im.scales)))
        ok &= all(bool((outputs(dec, a) == outputs(im, a)).all()) for a in acts)
    return ok


def check_rtl(image_dir: Path, out_dir: Path, simulator: str) -> dict:
    """The generated Verilog run on the first layer of each configuration and
    shape of a written image set: outputs, cycles and counters against the golden
    model (sim.runner, the same check as `ssvq sim`)."""
    from sim.runner import pick_layers, simulate_images
    from ssvq.image import read_images
    names = pick_layers(read_images(image_dir).manifest["layers"], all_layers=False)
    say(f"  RTL check: {len(names)} layer(s) (one per configuration and shape) of {image_dir} "
        f"on {simulator}")
    res = simulate_images(image_dir, names, simulator, seed=1, out_dir=out_dir,
                          progress=lambda m: None)
    return {"rtl_simulator": simulator, "rtl_layers": names,
            "rtl_bit_exact": bool(res["all_passed"])}
