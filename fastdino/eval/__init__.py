"""fastdino.eval: k-NN and linear-probe evaluation of pretrained backbones."""
