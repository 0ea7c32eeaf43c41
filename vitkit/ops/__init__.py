"""Pure tensor math of the papers (no nn.Module, no timm): unit-tested on their own."""
