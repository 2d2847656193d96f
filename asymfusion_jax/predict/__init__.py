"""Predict with a trained model on images of any size: `python -m asymfusion_jax.predict`.

  python -m asymfusion_jax.predict --workdir=DIR [--step=N] --input rgb=RGB_DIR \\
      --input depth=DEPTH_DIR --out=OUT
  python -m asymfusion_jax.predict --checkpoint=CKPT --config=configs/X.py --list=FILE --out=OUT
  python -m asymfusion_jax.predict --artifact=model.jax --input ... --out=OUT [--tile=H,W]

The model (sources.py) is a training workdir's best checkpoint (or that of --step), a checkpoint
written by asymfusion_jax.convert with the config it was converted for, or an artifact written by
asymfusion_jax.export (whose sidecar holds its config). The inputs (inputs.py) are one folder per
modality, files paired by name, or a list file. Each image runs at its own size, padded to what
the model needs with each modality's pad value and cropped back, or with --tile in overlapping
windows averaged in output space (windows.py); --scales and --flip add passes as evaluation does.
Images of one size run in batches; each new size compiles once. Per image it writes the
ensemble's (with --branches, each branch's too) label PNG in the dataset's label convention and
colour PNG in its palette, with --logits the float logits (.npy); a translation model writes RGB
images (outputs.py says where). A rerun skips the images already done.
"""

from asymfusion_jax.predict.inputs import Image, InputError, from_folders, from_list, images
from asymfusion_jax.predict.run import Options, predict
from asymfusion_jax.predict.sources import Model, from_artifact, from_checkpoint, from_workdir

__all__ = ['Image', 'InputError', 'Model', 'Options', 'from_artifact', 'from_checkpoint',
           'from_folders', 'from_list', 'from_workdir', 'images', 'predict']
