"""AuralSAM2: a frozen SAM2 that hears, through feature-level prompts from an AuralFuser.

One subpackage per box of the paper's figure, plus the training engine around them:

* `backbone`: the frozen SAM2 (stock `sam2`): build + checkpoint, encoder, prompted decoder, tracking;
* `audio`: the VGGish log-mel front end and VGGish; `text`: the frozen expression encoder;
* `fuser`: the AuralFuser (config, blocks, AudioCon heads, our mask prompt);
* `model`: the composed AuralSAM2 and its per-clip loss; `decoding`: the three mask decoding modes;
* `losses`: segmentation, contrastive (AudioCon) and mask-prompt losses;
* `evaluation`: metrics, protocols, streaming evaluation of a split;
* `engine`: the training loop and its plumbing; `items`: the data contract of training and evaluation;
* `checkpoints`: every foreign and own weights format; `config`: the typed experiment config;
* `pretrain`: the synthetic demo's SAM2 and VGGish pretraining recipes;
* `utils`: atomic files, hashes, devices; `paths`: the data folder.

Importing the package is cheap; it does not import torch or sam2 until a submodule is used.
"""

__version__ = "0.1.0"
