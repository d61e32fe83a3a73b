"""fastdino.models: backbones by name, the packed multi-crop student, the DINO head."""
