"""Whisper's log-mel features in numpy (no torch), as transformers' ``WhisperFeatureExtractor`` computes them."""
import numpy as np

from .image_processing import BatchFeature, ProcessorConfigMixin


def hertz_to_mel(freq):
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, np.float64)
    mels = 3.0 * freq / 200.0
    log_region = freq >= 1000.0
    return np.where(log_region, 15.0 + np.log(np.maximum(freq, 1e-10) / 1000.0) * (27.0 / np.log(6.4)), mels)


def mel_to_hertz(mels):
    mels = np.asarray(mels, np.float64)
    freq = 200.0 * mels / 3.0
    return np.where(mels >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (mels - 15.0)), freq)


def mel_filter_bank(num_frequency_bins, num_mel_filters, min_frequency, max_frequency, sampling_rate):
    """(num_frequency_bins, num_mel_filters) triangular filters on the Slaney mel scale with Slaney (area)
    normalisation, as ``transformers.audio_utils.mel_filter_bank(norm="slaney", mel_scale="slaney")``."""
    mel_freqs = np.linspace(hertz_to_mel(min_frequency), hertz_to_mel(max_frequency), num_mel_filters + 2)
    filter_freqs = mel_to_hertz(mel_freqs)
    fft_freqs = np.linspace(0, sampling_rate // 2, num_frequency_bins)
    filter_diff = np.diff(filter_freqs)
    slopes = filter_freqs[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / filter_diff[:-1]
    up = slopes[:, 2:] / filter_diff[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (filter_freqs[2: num_mel_filters + 2] - filter_freqs[:num_mel_filters]))[None, :]


def log_mel_spectrogram(waveform, mel_filters, n_fft, hop_length):
    """Whisper's features of one waveform: centred STFT (reflect padding, periodic Hann window), power spectrum,
    mel filters, log10 clamped at 1e-10, the last frame dropped, clipped to 8 below the maximum, then
    ``(x + 4) / 4``. Computed in float64, returned as float32 (n_mels, frames)."""
    padded = np.pad(np.asarray(waveform, np.float64), n_fft // 2, mode="reflect")
    num_frames = 1 + (padded.size - n_fft) // hop_length
    frames = np.lib.stride_tricks.as_strided(padded, (num_frames, n_fft),
                                             (hop_length * padded.strides[0], padded.strides[0]))
    window = np.hanning(n_fft + 1)[:-1]
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    mel = np.maximum(1e-10, mel_filters.T @ power.T)
    log_spec = np.log10(mel).astype(np.float32)[:, :-1]
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


class WhisperFeatureExtractor(ProcessorConfigMixin):
    """Pads (or truncates) each waveform (16 kHz mono) to ``chunk_length`` seconds with ``padding_value`` and
    computes ``feature_size`` log-mel bins per 10 ms frame: ``input_features`` (batch, feature_size, 3000).
    ``do_normalize`` first gives each waveform zero mean and unit variance over its real samples;
    ``return_attention_mask`` marks the frames of real samples."""

    defaults = {"feature_size": 80, "sampling_rate": 16000, "hop_length": 160, "chunk_length": 30, "n_fft": 400,
                "padding_value": 0.0, "padding_side": "right", "return_attention_mask": False, "dither": 0.0}
    type_key = "feature_extractor_type"
    ignored_keys = ProcessorConfigMixin.ignored_keys | {"n_samples", "nb_max_frames", "mel_filters"}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.dither:
            raise ValueError(f"dither={self.dither} is not supported (transformers draws the noise from torch)")
        if self.padding_side != "right":
            raise ValueError(f"padding_side={self.padding_side!r} is not supported (Whisper pads on the right)")
        self.n_samples = self.chunk_length * self.sampling_rate
        self.nb_max_frames = self.n_samples // self.hop_length
        self.mel_filters = mel_filter_bank(1 + self.n_fft // 2, self.feature_size, 0.0, 8000.0, self.sampling_rate)

    def to_dict(self):
        return {**super().to_dict(), "n_samples": self.n_samples, "nb_max_frames": self.nb_max_frames}

    def __call__(self, raw_speech, truncation=True, return_tensors=None, return_attention_mask=None,
                 padding="max_length", max_length=None, sampling_rate=None, do_normalize=None):
        if sampling_rate is not None and sampling_rate != self.sampling_rate:
            raise ValueError(f"The model corresponding to this feature extractor: {type(self).__name__} was trained "
                             f"using a sampling rate of {self.sampling_rate}. Please make sure that the provided "
                             f"`raw_speech` input was sampled with {self.sampling_rate} and not {sampling_rate}.")
        if padding != "max_length":
            raise ValueError(f"padding={padding!r} is not supported: Whisper's encoder takes exactly "
                             f"{self.nb_max_frames} frames (padding='max_length')")
        waveforms = self._waveforms(raw_speech)
        length = max_length or self.n_samples
        longest = max(len(w) for w in waveforms)
        if not truncation and longest > length:
            raise ValueError(f"A waveform has {longest} samples, more than max_length={length}; pass "
                             "truncation=True")
        mask = np.zeros((len(waveforms), length), np.int32)
        batch = np.full((len(waveforms), length), self.padding_value, np.float32)
        for i, wave in enumerate(waveforms):
            wave = wave[:length]
            batch[i, : len(wave)] = wave
            mask[i, : len(wave)] = 1
        if do_normalize:
            for i, real in enumerate(mask.sum(-1)):
                values = batch[i, :real]
                batch[i] = (batch[i] - values.mean()) / np.sqrt(values.var() + 1e-7)
                batch[i, real:] = self.padding_value
        features = np.stack([log_mel_spectrogram(w, self.mel_filters, self.n_fft, self.hop_length) for w in batch])
        data = {"input_features": features}
        if return_attention_mask or (return_attention_mask is None and self.return_attention_mask):
            frames = mask[:, :: self.hop_length]
            data["attention_mask"] = frames[:, :-1] if length % self.hop_length else frames
        return BatchFeature(data, tensor_type=return_tensors)

    @staticmethod
    def _waveforms(raw_speech):
        """A list of 1-D float32 waveforms from one waveform, a batch array or a list of waveforms."""
        if isinstance(raw_speech, np.ndarray) and raw_speech.ndim > 2:
            raise ValueError("Only mono-channel audio is supported (one float per time step)")
        batched = (isinstance(raw_speech, np.ndarray) and raw_speech.ndim == 2) or (
            isinstance(raw_speech, (list, tuple)) and len(raw_speech) > 0
            and isinstance(raw_speech[0], (np.ndarray, list, tuple)))
        items = list(raw_speech) if batched else [raw_speech]
        waveforms = [np.asarray(w, np.float32).reshape(-1) for w in items]
        if not waveforms or any(w.size == 0 for w in waveforms):
            raise ValueError("raw_speech holds an empty waveform")
        return waveforms
