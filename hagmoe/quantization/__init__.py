"""Weight formats for CPU serving: bfloat16 and int8 weight-only quantisation of the linears,
experts and head (`format`), applied to a loaded model (`serving`), written to and read from a
quantised checkpoint folder (`checkpoint`), and the `hagmoe quantize` command (`cli`)."""

from hagmoe.quantization.format import QUANTIZATIONS, WeightFormat

__all__ = ["QUANTIZATIONS", "WeightFormat"]
