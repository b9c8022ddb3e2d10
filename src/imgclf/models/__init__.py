"""Models: every recipe registered once, with its defaults and the module that builds it, and
where a config meets its recipe (`recipes`, no Keras); the registry (`registry`); the seed
model (`seed`), the fast recipe family (`fast`), its augmentation (`augment`), the pretrained
backbones (`backbones`), custom layers (`layers`) and optimizer (`muon`). Import the module you
need: this package imports nothing, so reading the recipe table never loads Keras."""
