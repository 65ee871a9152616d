"""Feature visualization and figures: maximum-response images (with the multiscale
edge-energy prior) and the PNG figures of the demo (adversarial examples, optimizer
loss curves, grids)."""
from .figures import examples_title, pick_examples, plot_adversarial, plot_grid, plot_loss_curves, save_image
from .response import Visualization, layer_names, maximize_response, render

__all__ = ["maximize_response", "render", "layer_names", "Visualization",
           "plot_adversarial", "pick_examples", "examples_title", "plot_loss_curves", "plot_grid", "save_image"]
