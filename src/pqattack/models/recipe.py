"""The training recipe's vocabulary, kept apart from the Lightning module so that checking a config imports no
trainer."""

SCHEDULES = ("onecycle", "constant", "triangle")
# Recipe keys that only some trainer configs have (conf/trainer/fastnet.yaml); absent, the module's defaults
# apply, which reproduce the training of the recipes that predate them exactly.
RECIPE_OPTIONS = ("crop_padding", "crop_pad_mode", "warmup", "lr_start", "lr_end", "norm_lr_scale", "lookahead",
                  "lookahead_every")
