"""Amaranth layouts of the stream's records, generated from the field tables in
ssvq.config (the packer in ssvq.image reads the same tables), so no bit position
is written twice."""
from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from ssvq.config import HEADER_BITS, HEADER_FIELDS, PARAM_BITS, PARAM_FIELDS


def _layout(size, table):
    return data.FlexibleLayout(size, {
        f.name: data.Field(signed(f.width) if f.signed else unsigned(f.width), f.offset)
        for f in table})


HeaderLayout = _layout(HEADER_BITS, HEADER_FIELDS)
ParamLayout = _layout(PARAM_BITS, PARAM_FIELDS)
