"""fastdino.finetune: DINO-MC's downstream tasks (scene classification, BigEarthNet multi-label, OSCD change
detection) as `fastdino finetune classify|multilabel|change`; see docs/finetune.md."""
