"""Starting weights: ImageNet torchvision ResNet .pth and converted checkpoints, merged by name."""

import jax
import numpy as np
import pytest

from asymfusion_jax import initialization, sharding, variables_io
from asymfusion_jax.models import build_model
from asymfusion_jax.tasks.segmentation import optim
from asymfusion_jax.tasks.segmentation import task as segmentation
from tests import tiny


def make_state(config):
  model = build_model(config)
  tx = optim.make_optimizer(config, 4)
  return segmentation.create_train_state(model, tx, config, sharding.make_mesh())


def tiny_config(**model):
  config = tiny.config({})
  config.model.update(model)
  return config


def test_torchvision_resnet_initialises_the_encoder(tmp_path):
  torch = pytest.importorskip('torch')
  from torchvision.models import resnet  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  net = resnet.ResNet(resnet.Bottleneck, [2, 2, 2, 2])  # torchvision layout, tiny depth.
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-1, 1)
        m.running_var.uniform_(0.5, 2)
  path = str(tmp_path / 'resnet.pth')
  torch.save(net.state_dict(), path)

  config = tiny_config(width=64)
  state = make_state(config)
  decoder_before = jax.tree.map(np.asarray, state.params['clf_conv'])
  config.init.torch_resnet = path
  state = initialization.from_pretrained(state, config)

  sd = {k: v.numpy() for k, v in net.state_dict().items()}
  backbone = state.params['backbone']
  np.testing.assert_array_equal(backbone['conv1']['kernel'],
                                sd['conv1.weight'].transpose(2, 3, 1, 0))
  for m in range(2):  # The ImageNet BatchNorm is copied to every modality.
    np.testing.assert_array_equal(state.batch_stats['backbone']['layer3_1']['bn2']['mean'][m],
                                  sd['layer3.1.bn2.running_mean'])
    np.testing.assert_array_equal(backbone['layer1_0']['downsample_bn']['scale'][m],
                                  sd['layer1.0.downsample.1.weight'])
  jax.tree.map(np.testing.assert_array_equal, state.params['clf_conv'], decoder_before)


def test_converted_checkpoint_initialises_everything(tmp_path):
  config = tiny_config()
  source = make_state(config)
  variables = jax.tree.map(lambda x: np.asarray(x) + 1.0, source.variables())
  variables_io.save_variables(str(tmp_path / 'ckpt'), variables)
  config.init.checkpoint = str(tmp_path / 'ckpt')
  state = initialization.from_pretrained(make_state(config), config)
  jax.tree.map(np.testing.assert_array_equal, state.variables(), variables)


def test_mis_shaped_pretrained_weights_name_the_key(tmp_path):
  wide = make_state(tiny_config(width=16))
  variables_io.save_variables(str(tmp_path / 'wide'), wide.variables())
  config = tiny_config()
  config.init.checkpoint = str(tmp_path / 'wide')
  with pytest.raises(ValueError, match=r'backbone/bn1/mean: \(2, 16\) vs model \(2, 8\)'):
    initialization.from_pretrained(make_state(config), config)


@pytest.mark.parametrize('frozen_bn', [True, False])
def test_no_weights_with_frozen_bn_warns(frozen_bn, caplog):
  """Frozen BatchNorm without pretrained weights freezes the initial statistics: say so."""
  config = tiny_config()
  config.frozen_bn = frozen_bn
  state = make_state(config)
  with caplog.at_level('WARNING'):
    same = initialization.from_pretrained(state, config)
  assert same is state
  assert ('--config.init.torch_resnet' in caplog.text) == frozen_bn
