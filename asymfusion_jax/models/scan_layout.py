"""config.model.scan_blocks: runs of identical blocks as one nn.scan, and the variable layouts.

With scan_blocks on, a model applies a run of identical blocks (ResNet stage blocks after the
first, except a last block that fuses; Xception-65's middle-flow units, except the fused last
one) as one `flax.linen.scan` over a single block module whose variables carry a leading axis
of the run's length, so the compiler sees one block body instead of many copies. Outputs,
gradients and BatchNorm updates are those of the unscanned model with the same weights.
experiments/scan_compile.py measures compile and step time with and without (on XLA:CPU: at
best 0.7x the compile time, RefineNet-152, and slower steps; experiments/RESULTS.md).

Layouts. The canonical layout is the unscanned one: one entry per block, named as the model
names its blocks (`layer3_1`, ..., `layer3_21`; `middle_flow_block1_unit_1`, ...). This is the
layout that the converters (asymfusion_jax.convert) read and write. The scanned layout replaces
the blocks first..last of a run by one group entry named `<prefix><first>_to_<last>`
(`layer3_1_to_21`) whose leaves are the blocks' leaves stacked along a new leading axis, in
block order. A layout is therefore the set of group names a tree holds (`groups`), and
`to_layout` converts any tree (variables, a whole train state with its optimizer state, its
abstract shapes, the metadata of a checkpoint) between layouts by name alone: the group entries
it does not want are split back into their blocks, then the blocks of every group it wants are
stacked, in every mapping of the tree that holds them.

Checkpoints hold the layout of the run that wrote them (no conversion, so no cost, on save);
restoring one into a model of the other layout converts it (`restore`), and so does merging
pretrained weights (asymfusion_jax.initialization.merge), so a run resumes, evaluates and
exports with either setting whatever the setting that wrote its checkpoint.
"""

import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

SEPARATOR = '_to_'
_GROUP = re.compile(r'^(.*?)(\d+)' + SEPARATOR + r'(\d+)$')


# The models' side.


def runs(count: int, first: int, last: int, enabled: bool) -> list[range]:
  """Blocks 0..count-1 as the runs to apply in order: blocks first..last (inclusive, identical
  blocks) as one run where `enabled` and the run has at least two blocks, every other block as
  a run of its own."""
  if enabled and last - first >= 1:
    return [range(i, i + 1) for i in range(first)] + [range(first, last + 1)] + [
        range(i, i + 1) for i in range(last + 1, count)]
  return [range(i, i + 1) for i in range(count)]


def name(prefix: str, run: range, base: int = 0) -> str:
  """The module name of a run: its block's name `<prefix><index + base>` for a single block,
  the group name `<prefix><first>_to_<last>` for a scanned run."""
  if len(run) == 1:
    return f'{prefix}{run.start + base}'
  return f'{prefix}{run.start + base}{SEPARATOR}{run.stop - 1 + base}'


def apply(block: nn.Module, x: jax.Array, run: range,
          carry: Callable[[Any], jax.Array] = lambda y: y) -> jax.Array:
  """Applies the unbound `block` (named by `name`) to x once per block of `run`, each time with
  that block's variables; a run of several blocks as one nn.scan whose body is the block.

  carry: the part of the block's output that the next block takes (the whole output, or, for a
  block returning a tuple, e.g. lambda y: y[0]); other outputs of a scanned run are dropped.
  """
  if len(run) == 1:
    return carry(block(x))

  def body(module, h, _):
    return carry(module(h)), None

  scanned = nn.scan(body, variable_axes={'params': 0, 'batch_stats': 0},
                    split_rngs={'params': True, 'dropout': True}, length=len(run))
  return scanned(block, x, None)[0]


# The variables' side.


def _members(group: str) -> list[str]:
  prefix, first, last = _GROUP.match(group).groups()
  return [f'{prefix}{i}' for i in range(int(first), int(last) + 1)]


def groups(tree) -> frozenset[str]:
  """The group names (the scanned layout's entries) found in any mapping of `tree`; empty for
  the canonical layout."""
  found = set()

  def visit(mapping):
    found.update(k for k in mapping if isinstance(k, str) and _GROUP.match(k))
    return mapping

  _map_nodes(tree, visit)
  return frozenset(found)


def _is_array(leaf) -> bool:
  return isinstance(leaf, (np.ndarray, np.generic, jax.Array))  # Tracers are jax.Arrays.


def _sharding(leaf, spec: Callable[[tuple], tuple]):
  sharding = getattr(leaf, 'sharding', None)
  if isinstance(sharding, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec(
        tuple(sharding.spec) + (None,) * (len(leaf.shape) - len(sharding.spec)))))
  return None


def _stack(leaves: list):
  """Leaves stacked along a new leading axis: NumPy for host arrays, JAX for device arrays and
  tracers, a ShapeDtypeStruct (sharded alike, the new axis unsharded) for abstract leaves."""
  if all(isinstance(leaf, (np.ndarray, np.generic)) for leaf in leaves):
    return np.stack(leaves)
  if all(_is_array(leaf) for leaf in leaves):
    return jnp.stack(leaves)
  leaf = leaves[0]
  return jax.ShapeDtypeStruct((len(leaves),) + tuple(leaf.shape), leaf.dtype,
                              sharding=_sharding(leaf, lambda spec: (None,) + spec))


def _take(leaf, i: int):
  """Entry i of a stacked leaf (array or abstract)."""
  if _is_array(leaf):
    return leaf[i]
  return jax.ShapeDtypeStruct(tuple(leaf.shape[1:]), leaf.dtype,
                              sharding=_sharding(leaf, lambda spec: spec[1:]))


def _map_nodes(node, fn):
  """`node` with fn applied to every mapping in it, innermost first, through any pytree."""
  if isinstance(node, Mapping):
    return fn({k: _map_nodes(v, fn) for k, v in node.items()})
  children, treedef = jax.tree_util.tree_flatten(node, is_leaf=lambda n: n is not node)
  if treedef.num_leaves == 1 and len(children) == 1 and children[0] is node:
    return node  # A leaf.
  return jax.tree_util.tree_unflatten(treedef, [_map_nodes(c, fn) for c in children])


def _split(entry, count: int, where: str) -> list:
  leaves, treedef = jax.tree_util.tree_flatten(entry)
  for leaf in leaves:
    if not leaf.shape or leaf.shape[0] != count:
      raise ValueError(f'scan group {where} has a leaf of shape {tuple(leaf.shape)}; expected '
                       f'a leading axis of {count}, one entry per block')
  return [jax.tree_util.tree_unflatten(treedef, [_take(leaf, i) for leaf in leaves])
          for i in range(count)]


def _convert(mapping: dict, want: frozenset) -> dict:
  out = {}
  for key, value in mapping.items():  # Unwanted groups split into their blocks.
    if isinstance(key, str) and _GROUP.match(key) and key not in want:
      members = _members(key)
      out.update(zip(members, _split(value, len(members), key)))
    else:
      out[key] = value
  for group in want:  # Wanted groups stacked from their blocks.
    members = _members(group)
    present = [m for m in members if m in out]
    if not present:
      continue
    if len(present) != len(members):
      raise ValueError(f'cannot form scan group {group}: blocks '
                       f'{sorted(set(members) - set(present))} are missing beside {present}')
    trees = [out.pop(m) for m in members]
    structure = jax.tree_util.tree_structure(trees[0])
    if any(jax.tree_util.tree_structure(t) != structure for t in trees):
      raise ValueError(f'cannot form scan group {group}: its blocks have different entries')
    out[group] = jax.tree_util.tree_map(lambda *leaves: _stack(list(leaves)), *trees)
  return out


def to_layout(tree, want) -> Any:
  """`tree` (any pytree of mappings: variables, a train state, abstract shapes) in the layout
  whose groups are `want` (a set of group names, or a tree whose `groups` give them)."""
  want = frozenset(want) if isinstance(want, (set, frozenset)) else groups(want)
  if not want and not groups(tree):
    return tree
  return _map_nodes(tree, lambda mapping: _convert(mapping, want))


def canonical(tree) -> Any:
  """`tree` in the canonical (unscanned) layout."""
  return to_layout(tree, frozenset())


def restore(read: Callable[[Any], Any], stored, target) -> Any:
  """What `read(abstract)` restores, in the layout of `target`.

  read: restores a checkpoint against an abstract tree of its own layout. stored: any tree of
  the checkpoint's names (its metadata). target: the abstract tree wanted, with shardings.
  A checkpoint in target's layout is read as it is; one in another layout is read in its own,
  then converted and placed by the target's shardings.
  """
  have, want = groups(stored), groups(target)
  if have == want:
    return read(target)
  restored = to_layout(read(to_layout(target, have)), want)

  def place(value, like):
    sharding = getattr(like, 'sharding', None)
    return jax.device_put(value, sharding) if sharding is not None else value

  return jax.tree_util.tree_map(place, restored, target)
