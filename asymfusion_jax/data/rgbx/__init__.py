"""The generic multimodal segmentation dataset 'rgbx': your own data in the RGB-X layout.

config.data.name = 'rgbx' reads a dataset folder (config.data.manual_dir) in the layout that
DFormer, CMX and the projects built on them use:

  DATASET/
    RGB/<name>.<jpg|png>
    <X folder>/<name>.<png|jpg|npy>     one folder per extra modality: Depth/, HHA/, Thermal/, ...
    Label/<name>.png
    train.txt, test.txt                 one sample a line, "RGB/<name>.<ext>" or "<name>"

Config keys (config_lib.rgbx_refinenet gives the defaults):
  data.modality_folders   {modality name: folder}; config.modalities picks and orders any of them
  data.label_folder       'Label'
  data.list_files         {'train': 'train.txt', 'val': 'test.txt'}
  data.label_offset       1: 0 is unlabelled and classes are 1..N (DFormer); 0: labels are classes
  data.ignore_label       255, unlabelled whatever the offset
  data.normalisation      {modality: {scale, mean, std, interpolation}}, any of them optional
                          (`normalisation`: else ImageNet for 'rgb', else statistics measured at
                          build time)
  data.class_names, data.palette   optional, one per class

Modules: `layout` (list files, finding and decoding files), `builder` (the TFDS build, files kept
as they are, read by index), `normalisation`, `pipeline` (the batches and what evaluation and
export ask of a dataset), `checks` (config checks), `synthetic` (a generated dataset). This
package exposes the pipeline's functions, so it is what data.segmentation_pipeline returns.
Importing it imports neither TensorFlow nor TFDS.
"""

from asymfusion_jax.data.rgbx.pipeline import (  # pylint: disable=unused-import
    DATASET_NAME, check_config, check_labels, class_names, eval_batches, input_encoding,
    normalisation, num_examples, palette, planned_num_examples, prepare, read, steps_per_epoch,
    train_batches)
