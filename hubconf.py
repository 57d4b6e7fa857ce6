"""torch.hub entrypoints: every registered model and alias of the zoo.

    model = torch.hub.load('<clone or owner/repo>', 'topformer_imachsr', pretrained=True)
"""
import zoo as _zoo

dependencies = ['torch', 'torchvision', 'timm', 'huggingface_hub', 'safetensors']


def _hub_entrypoint(name: str):
    def entrypoint(pretrained: bool = False, **kwargs):
        return _zoo.create_model(name, pretrained=pretrained, **kwargs)
    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = _zoo.model_entrypoint(name).__doc__
    return entrypoint


globals().update({name: _hub_entrypoint(name) for name in _zoo.list_models(include_aliases=True)})
