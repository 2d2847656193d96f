"""Summaries of a compiled step's programs: what its convolutions run in and what runs unfused.

summarize_stablehlo reads the lowered StableHLO (the program as the model asked for it, before
any backend rewrite: the dtype and batch size of every convolution); summarize_hlo reads the
optimised HLO the backend runs (XLA:CPU or XLA:GPU text): convolutions (cuDNN custom calls
included) by dtype and batch size, dtype conversions, and the elementwise ops, transposes and
copies that run outside any fusion. experiments/benchmark.py --dump_hlo prints both; the tests
check with them that the modalities run as one batched convolution in the requested dtype.
"""

import collections
import re

_STABLEHLO_CONV = re.compile(
    r'stablehlo\.convolution.*?dim_numbers = \[([^\]]*)\]x\[[^\]]*\]->\[[^\]]*\].*'
    r':\s*\(tensor<([^>]*)>,\s*tensor<([^>]*)>\)\s*->\s*tensor<([^>]*)>')
_HLO_INSTR = re.compile(
    r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\w+)\[([\d,]*)\]\S*\s+([\w\-]+)\(([^)]*)\)')
_HLO_CUSTOM_CONV = re.compile(
    r'^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*\(.*?\)\s+custom-call\(([^)]*)\).*'
    r'custom_call_target="__cudnn\$conv')
_HLO_PARAM = re.compile(r'([\w.\-]+):\s*(\w+)\[([\d,]*)\]')
_HLO_CONV_LABELS = re.compile(r'dim_labels=(\w+)_\w+->\w+')
_ELEMENTWISE = {
    'add', 'subtract', 'multiply', 'divide', 'maximum', 'minimum', 'exponential', 'log',
    'negate', 'select', 'compare', 'rsqrt', 'sqrt', 'tanh', 'abs', 'and', 'or', 'not', 'power',
    'convert', 'clamp', 'exponential-minus-one', 'log-plus-one'}


def _dims(text: str) -> list[int]:
  return [int(d) for d in text.split(',') if d.strip()]


def _tensor_type(text: str) -> tuple[list[int], str]:
  """'4x32x32x3xbf16' -> ([4, 32, 32, 3], 'bf16')."""
  *shape, dtype = text.split('x')
  return [int(d) for d in shape], dtype


def summarize_stablehlo(text: str) -> dict:
  """Convolutions of a lowered module: their lhs dtypes and lhs batch sizes.

  This is the program before the backend touches it, so it shows the dtype each convolution was
  asked to run in; a backend may still rewrite it (XLA:CPU runs bf16 convolutions in f32).
  """
  dtypes, batches = collections.Counter(), collections.Counter()
  for match in _STABLEHLO_CONV.finditer(text):
    labels = [t.strip() for t in match.group(1).split(',')]
    lhs_shape, lhs_dtype = _tensor_type(match.group(2))
    dtypes[lhs_dtype] += 1
    batches[lhs_shape[labels.index('b')]] += 1
  converts = collections.Counter(
      f'{a}->{b}' for a, b in re.findall(
          r'stablehlo\.convert.*?:\s*\(?tensor<[\dx]*x?(\w+)>\)?\s*->\s*tensor<[\dx]*x?(\w+)>',
          text))
  return {'convolutions': sum(dtypes.values()), 'conv_dtypes': dict(dtypes),
          'conv_lhs_batch': dict(sorted(batches.items())), 'converts': dict(converts)}


def _split_computations(text: str) -> dict[str, tuple[str, list[str]]]:
  """{computation name: (header line, instruction lines)} of an HLO module's text."""
  comps, name = {}, None
  for line in text.splitlines():
    header = re.match(r'^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$', line)
    if header:
      name = header.group(1)
      comps[name] = (line, [])
    elif name is not None and line.startswith(' '):
      comps[name][1].append(line)
  return comps


def summarize_hlo(text: str) -> dict:
  """Counts, in optimised HLO, of what costs time outside the matrix units.

  Ops inside fusion computations run as part of one kernel; the same op outside any fusion
  is a kernel (or a loop) of its own, so 'unfused_elementwise' counts those, and
  'top_level_transposes' / 'top_level_copies' the layout changes that run as separate passes
  over memory. Operands are printed by name only, so their shapes are looked up in the
  computation's parameters and earlier instructions.
  """
  # Fusion bodies, and the scalar computations that reductions, scatters and select-and-scatters
  # apply per element: neither runs as a kernel of its own.
  fused = set(re.findall(r'(?:calls|to_apply|select|scatter)=%?([\w.\-]+)', text))
  ops, top_ops = collections.Counter(), collections.Counter()
  conv_dtypes, conv_batches = collections.Counter(), collections.Counter()
  converts = collections.Counter()
  for name, (header, lines) in _split_computations(text).items():
    top = name not in fused
    shapes = {p: (dt, _dims(d)) for p, dt, d in _HLO_PARAM.findall(header.split('->')[0])}
    for line in lines:
      match = _HLO_INSTR.match(line)
      custom = _HLO_CUSTOM_CONV.match(line)
      if custom:  # GPU: cuDNN convolutions are custom calls with a tuple result.
        opcode, operands = 'convolution', custom.group(1)
      elif match:
        result, out_dtype, out_dims, opcode, operands = match.groups()
        shapes[result] = (out_dtype, _dims(out_dims))
      else:
        continue
      operands = [o.strip().lstrip('%') for o in operands.split(',') if o.strip()]
      ops[opcode] += 1
      if top:
        top_ops[opcode] += 1
      first = shapes.get(operands[0]) if operands else None
      if opcode == 'convolution' and first:
        conv_dtypes[first[0]] += 1
        labels = _HLO_CONV_LABELS.search(line)
        if labels and len(labels.group(1)) == len(first[1]):
          conv_batches[first[1][labels.group(1).index('b')]] += 1
      if opcode == 'convert' and first:
        converts[f'{first[0]}->{out_dtype}'] += 1
  custom_convs = len(re.findall(r'custom_call_target="__cudnn\$conv', text))
  return {
      # All convolutions, cuDNN custom calls included; the latter also on their own.
      'convolutions': ops['convolution'], 'custom_call_convolutions': custom_convs,
      'conv_dtypes': dict(conv_dtypes), 'conv_lhs_batch': dict(sorted(conv_batches.items())),
      'fusions': ops['fusion'], 'transposes': ops['transpose'],
      'top_level_transposes': top_ops['transpose'], 'top_level_copies': top_ops['copy'],
      'converts': dict(converts),
      'unfused_elementwise': sum(top_ops[o] for o in _ELEMENTWISE),
      'gathers': ops['gather'], 'scatters': ops['scatter'],
      'reduce_windows': ops['reduce-window'], 'select_and_scatters': ops['select-and-scatter'],
  }
