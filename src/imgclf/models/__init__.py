"""Models: what a recipe is and every recipe's defaults (`recipes`, no Keras), the registry
(`registry`), the seed model (`seed`), the fast recipe family (`fast`), its augmentation
(`augment`), custom layers (`layers`) and optimizer (`muon`). Import the module you need:
this package imports nothing, so reading the defaults table never loads Keras."""
