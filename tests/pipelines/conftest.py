import pytest
from _tiny_pipelines import tiny_ltx_pipeline


@pytest.fixture(scope="session")
def ltx_folder(tmp_path_factory):
    """A tiny LTX-Video pipeline saved as a diffusers folder."""
    folder = tmp_path_factory.mktemp("ltx") / "pipeline"
    tiny_ltx_pipeline().save_pretrained(folder)
    return folder
