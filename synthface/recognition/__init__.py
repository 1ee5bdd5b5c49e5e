"""Face recognizers: backbones, margin losses, training, and the verification protocols they are judged by."""
