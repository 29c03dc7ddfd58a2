"""A network with its zero-initialised layers (adaLN-Zero gates, output heads) drawn at random, so
that every branch and condition is live (at zero they hide them all): tests/test_dit.py,
tests/test_video_dit.py."""

import torch


def live(net):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    return net.eval()
