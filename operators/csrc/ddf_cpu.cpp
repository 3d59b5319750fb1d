// Decoupled dynamic filter (DDF, Zhou et al., CVPR 2021) on the CPU, forward and backward.
//
//   y[n,c,o] = sum_k f(spatial[n,k,o], channel[n,c,k]) * x[n,c, o*stride + k*dilation - pad]
//   f = product ("mul") or sum ("add"); zero padding; H_out = ceil(H / stride).
//
// Every pass walks whole (n, c) planes tap by tap, so nothing k*k times larger than the input is
// ever built, and the innermost loop runs along contiguous output columns (vectorised by the compiler).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>

namespace {

struct Geometry {
  int64_t N, C, H, W, Ho, Wo, K, KK, stride, dilation, pad;
};

Geometry geometry(const at::Tensor& x, int64_t K, int64_t stride, int64_t dilation) {
  Geometry g;
  g.N = x.size(0); g.C = x.size(1); g.H = x.size(2); g.W = x.size(3);
  g.K = K; g.KK = K * K; g.stride = stride; g.dilation = dilation;
  g.pad = (K - 1) / 2 * dilation;
  g.Ho = (g.H + stride - 1) / stride;
  g.Wo = (g.W + stride - 1) / stride;
  return g;
}

// Output indices o in [lo, hi) whose input index o*stride + offset lies inside [0, size).
inline void valid_range(int64_t offset, int64_t stride, int64_t size, int64_t out_size, int64_t& lo, int64_t& hi) {
  lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  hi = size - 1 - offset >= 0 ? std::min(out_size, (size - 1 - offset) / stride + 1) : 0;
  if (hi < lo) hi = lo;
}

template <typename scalar_t, bool MUL>
void forward_planes(const Geometry& g, const scalar_t* x, const scalar_t* ch, const scalar_t* sp, scalar_t* y) {
  const int64_t plane_in = g.H * g.W, plane_out = g.Ho * g.Wo;
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / g.C;
      const scalar_t* xp = x + nc * plane_in;
      scalar_t* yp = y + nc * plane_out;
      std::fill(yp, yp + plane_out, scalar_t(0));
      for (int64_t i = 0; i < g.K; ++i) {
        const int64_t oi = i * g.dilation - g.pad;
        int64_t h0, h1;
        valid_range(oi, g.stride, g.H, g.Ho, h0, h1);
        for (int64_t j = 0; j < g.K; ++j) {
          const int64_t oj = j * g.dilation - g.pad, k = i * g.K + j;
          int64_t w0, w1;
          valid_range(oj, g.stride, g.W, g.Wo, w0, w1);
          const scalar_t cw = ch[nc * g.KK + k];
          const scalar_t* spk = sp + (n * g.KK + k) * plane_out;
          for (int64_t ho = h0; ho < h1; ++ho) {
            const scalar_t* xr = xp + (ho * g.stride + oi) * g.W + oj;
            const scalar_t* sr = spk + ho * g.Wo;
            scalar_t* yr = yp + ho * g.Wo;
            if (g.stride == 1) {
#pragma omp simd
              for (int64_t wo = w0; wo < w1; ++wo)
                yr[wo] += (MUL ? sr[wo] * cw : sr[wo] + cw) * xr[wo];
            } else {
              for (int64_t wo = w0; wo < w1; ++wo)
                yr[wo] += (MUL ? sr[wo] * cw : sr[wo] + cw) * xr[wo * g.stride];
            }
          }
        }
      }
    }
  });
}

// Gradients with respect to the input and the channel filter: one (n, c) plane per task.
template <typename scalar_t, bool MUL>
void backward_input_channel(const Geometry& g, const scalar_t* go, const scalar_t* x, const scalar_t* ch,
                            const scalar_t* sp, scalar_t* gx, scalar_t* gch) {
  const int64_t plane_in = g.H * g.W, plane_out = g.Ho * g.Wo;
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / g.C;
      const scalar_t* xp = x + nc * plane_in;
      const scalar_t* gp = go + nc * plane_out;
      scalar_t* gxp = gx + nc * plane_in;
      std::fill(gxp, gxp + plane_in, scalar_t(0));
      for (int64_t i = 0; i < g.K; ++i) {
        const int64_t oi = i * g.dilation - g.pad;
        int64_t h0, h1;
        valid_range(oi, g.stride, g.H, g.Ho, h0, h1);
        for (int64_t j = 0; j < g.K; ++j) {
          const int64_t oj = j * g.dilation - g.pad, k = i * g.K + j;
          int64_t w0, w1;
          valid_range(oj, g.stride, g.W, g.Wo, w0, w1);
          const scalar_t cw = ch[nc * g.KK + k];
          const scalar_t* spk = sp + (n * g.KK + k) * plane_out;
          scalar_t acc = 0;
          for (int64_t ho = h0; ho < h1; ++ho) {
            const int64_t row = (ho * g.stride + oi) * g.W + oj;
            const scalar_t* xr = xp + row;
            scalar_t* gxr = gxp + row;
            const scalar_t* sr = spk + ho * g.Wo;
            const scalar_t* gr = gp + ho * g.Wo;
            if (g.stride == 1) {
#pragma omp simd reduction(+ : acc)
              for (int64_t wo = w0; wo < w1; ++wo) {
                gxr[wo] += gr[wo] * (MUL ? sr[wo] * cw : sr[wo] + cw);
                acc += MUL ? gr[wo] * sr[wo] * xr[wo] : gr[wo] * xr[wo];
              }
            } else {
              for (int64_t wo = w0; wo < w1; ++wo) {
                gxr[wo * g.stride] += gr[wo] * (MUL ? sr[wo] * cw : sr[wo] + cw);
                acc += MUL ? gr[wo] * sr[wo] * xr[wo * g.stride] : gr[wo] * xr[wo * g.stride];
              }
            }
          }
          gch[nc * g.KK + k] = acc;
        }
      }
    }
  });
}

// Gradient with respect to the spatial filter: a sum over channels, so one (n, output row) per task.
template <typename scalar_t, bool MUL>
void backward_spatial(const Geometry& g, const scalar_t* go, const scalar_t* x, const scalar_t* ch, scalar_t* gsp) {
  const int64_t plane_in = g.H * g.W, plane_out = g.Ho * g.Wo;
  at::parallel_for(0, g.N * g.Ho, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / g.Ho, ho = nh % g.Ho;
      for (int64_t i = 0; i < g.K; ++i) {
        const int64_t oi = i * g.dilation - g.pad, hi = ho * g.stride + oi;
        for (int64_t j = 0; j < g.K; ++j) {
          const int64_t oj = j * g.dilation - g.pad, k = i * g.K + j;
          scalar_t* gr_out = gsp + ((n * g.KK + k) * g.Ho + ho) * g.Wo;
          std::fill(gr_out, gr_out + g.Wo, scalar_t(0));
          if (hi < 0 || hi >= g.H) continue;
          int64_t w0, w1;
          valid_range(oj, g.stride, g.W, g.Wo, w0, w1);
          for (int64_t c = 0; c < g.C; ++c) {
            const int64_t nc = n * g.C + c;
            const scalar_t cw = MUL ? ch[nc * g.KK + k] : scalar_t(1);
            const scalar_t* xr = x + nc * plane_in + hi * g.W + oj;
            const scalar_t* gr = go + nc * plane_out + ho * g.Wo;
            if (g.stride == 1) {
#pragma omp simd
              for (int64_t wo = w0; wo < w1; ++wo) gr_out[wo] += gr[wo] * cw * xr[wo];
            } else {
              for (int64_t wo = w0; wo < w1; ++wo) gr_out[wo] += gr[wo] * cw * xr[wo * g.stride];
            }
          }
        }
      }
    }
  });
}

// ---- Channels-last (NHWC) kernels: the innermost loop runs over C, contiguous and long. ----
// Layouts: x (N, H, W, C); channel filter (N, KK, C); spatial filter (N, Ho, Wo, KK); y (N, Ho, Wo, C).

template <typename scalar_t, bool MUL>
void forward_nhwc(const Geometry& g, const scalar_t* x, const scalar_t* ch, const scalar_t* sp, scalar_t* y) {
  at::parallel_for(0, g.N * g.Ho, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / g.Ho, ho = nh % g.Ho;
      for (int64_t wo = 0; wo < g.Wo; ++wo) {
        scalar_t* yv = y + (nh * g.Wo + wo) * g.C;
        std::fill(yv, yv + g.C, scalar_t(0));
        const scalar_t* s = sp + (nh * g.Wo + wo) * g.KK;
        for (int64_t i = 0; i < g.K; ++i) {
          const int64_t hi = ho * g.stride + i * g.dilation - g.pad;
          if (hi < 0 || hi >= g.H) continue;
          for (int64_t j = 0; j < g.K; ++j) {
            const int64_t wi = wo * g.stride + j * g.dilation - g.pad;
            if (wi < 0 || wi >= g.W) continue;
            const int64_t k = i * g.K + j;
            const scalar_t sk = s[k];
            const scalar_t* xv = x + ((n * g.H + hi) * g.W + wi) * g.C;
            const scalar_t* cv = ch + (n * g.KK + k) * g.C;
#pragma omp simd
            for (int64_t c = 0; c < g.C; ++c) yv[c] += (MUL ? sk * cv[c] : sk + cv[c]) * xv[c];
          }
        }
      }
    }
  });
}

// Filter gradients: per output pixel, grad_spatial is a dot product over C and grad_channel
// accumulates into a per-row partial buffer (N, Ho, KK, C), summed over rows afterwards.
template <typename scalar_t, bool MUL>
void backward_filters_nhwc(const Geometry& g, const scalar_t* go, const scalar_t* x, const scalar_t* ch,
                           const scalar_t* sp, scalar_t* gch_rows, scalar_t* gsp) {
  at::parallel_for(0, g.N * g.Ho, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / g.Ho, ho = nh % g.Ho;
      scalar_t* row = gch_rows + nh * g.KK * g.C;
      std::fill(row, row + g.KK * g.C, scalar_t(0));
      for (int64_t wo = 0; wo < g.Wo; ++wo) {
        const scalar_t* gv = go + (nh * g.Wo + wo) * g.C;
        const scalar_t* s = sp + (nh * g.Wo + wo) * g.KK;
        scalar_t* gs = gsp + (nh * g.Wo + wo) * g.KK;
        for (int64_t i = 0; i < g.K; ++i) {
          const int64_t hi = ho * g.stride + i * g.dilation - g.pad;
          for (int64_t j = 0; j < g.K; ++j) {
            const int64_t wi = wo * g.stride + j * g.dilation - g.pad, k = i * g.K + j;
            if (hi < 0 || hi >= g.H || wi < 0 || wi >= g.W) {
              gs[k] = 0;
              continue;
            }
            const scalar_t* xv = x + ((n * g.H + hi) * g.W + wi) * g.C;
            const scalar_t* cv = ch + (n * g.KK + k) * g.C;
            scalar_t* acc = row + k * g.C;
            const scalar_t sk = s[k];
            scalar_t dot = 0;
#pragma omp simd reduction(+ : dot)
            for (int64_t c = 0; c < g.C; ++c) {
              const scalar_t gx = gv[c] * xv[c];
              dot += MUL ? gx * cv[c] : gx;
              acc[c] += MUL ? gx * sk : gx;
            }
            gs[k] = dot;
          }
        }
      }
    }
  });
}

// Input gradient by gathering, one (n, input row) per task, so no two tasks write the same value.
template <typename scalar_t, bool MUL>
void backward_input_nhwc(const Geometry& g, const scalar_t* go, const scalar_t* ch, const scalar_t* sp,
                         scalar_t* gx) {
  at::parallel_for(0, g.N * g.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / g.H, hi = nh % g.H;
      for (int64_t wi = 0; wi < g.W; ++wi) {
        scalar_t* gv = gx + (nh * g.W + wi) * g.C;
        std::fill(gv, gv + g.C, scalar_t(0));
        for (int64_t i = 0; i < g.K; ++i) {
          const int64_t num_h = hi + g.pad - i * g.dilation;
          if (num_h < 0 || num_h % g.stride) continue;
          const int64_t ho = num_h / g.stride;
          if (ho >= g.Ho) continue;
          for (int64_t j = 0; j < g.K; ++j) {
            const int64_t num_w = wi + g.pad - j * g.dilation;
            if (num_w < 0 || num_w % g.stride) continue;
            const int64_t wo = num_w / g.stride;
            if (wo >= g.Wo) continue;
            const int64_t k = i * g.K + j, pix = (n * g.Ho + ho) * g.Wo + wo;
            const scalar_t sk = sp[pix * g.KK + k];
            const scalar_t* gov = go + pix * g.C;
            const scalar_t* cv = ch + (n * g.KK + k) * g.C;
#pragma omp simd
            for (int64_t c = 0; c < g.C; ++c) gv[c] += gov[c] * (MUL ? sk * cv[c] : sk + cv[c]);
          }
        }
      }
    }
  });
}

void check_inputs(const at::Tensor& x, const at::Tensor& ch, const at::Tensor& sp, const Geometry& g) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous(), "ddf_cpu: x must be a contiguous CPU tensor");
  TORCH_CHECK(ch.is_contiguous() && sp.is_contiguous(), "ddf_cpu: filters must be contiguous");
  TORCH_CHECK(ch.numel() == g.N * g.C * g.KK, "ddf_cpu: channel filter must be (N, C, k, k)");
  TORCH_CHECK(sp.numel() == g.N * g.KK * g.Ho * g.Wo, "ddf_cpu: spatial filter must be (N, k*k, H_out, W_out)");
}

}  // namespace

at::Tensor ddf_forward(const at::Tensor& x, const at::Tensor& ch, const at::Tensor& sp, int64_t kernel_size,
                       int64_t dilation, int64_t stride, bool mul) {
  const Geometry g = geometry(x, kernel_size, stride, dilation);
  check_inputs(x, ch, sp, g);
  auto y = at::empty({g.N, g.C, g.Ho, g.Wo}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ddf_forward", [&] {
    if (mul)
      forward_planes<scalar_t, true>(g, x.data_ptr<scalar_t>(), ch.data_ptr<scalar_t>(), sp.data_ptr<scalar_t>(),
                                     y.data_ptr<scalar_t>());
    else
      forward_planes<scalar_t, false>(g, x.data_ptr<scalar_t>(), ch.data_ptr<scalar_t>(), sp.data_ptr<scalar_t>(),
                                      y.data_ptr<scalar_t>());
  });
  return y;
}

std::vector<at::Tensor> ddf_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& ch,
                                     const at::Tensor& sp, int64_t kernel_size, int64_t dilation, int64_t stride,
                                     bool mul) {
  const Geometry g = geometry(x, kernel_size, stride, dilation);
  check_inputs(x, ch, sp, g);
  auto go = grad_out.contiguous();
  auto gx = at::empty_like(x);
  auto gch = at::empty_like(ch);
  auto gsp = at::empty_like(sp);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ddf_backward", [&] {
    const scalar_t *gop = go.data_ptr<scalar_t>(), *xp = x.data_ptr<scalar_t>();
    const scalar_t *chp = ch.data_ptr<scalar_t>(), *spp = sp.data_ptr<scalar_t>();
    if (mul) {
      backward_input_channel<scalar_t, true>(g, gop, xp, chp, spp, gx.data_ptr<scalar_t>(), gch.data_ptr<scalar_t>());
      backward_spatial<scalar_t, true>(g, gop, xp, chp, gsp.data_ptr<scalar_t>());
    } else {
      backward_input_channel<scalar_t, false>(g, gop, xp, chp, spp, gx.data_ptr<scalar_t>(), gch.data_ptr<scalar_t>());
      backward_spatial<scalar_t, false>(g, gop, xp, chp, gsp.data_ptr<scalar_t>());
    }
  });
  return {gx, gch, gsp};
}

// NHWC entry points: x (N, H, W, C), ch (N, KK, C), sp (N, Ho, Wo, KK), all contiguous.
Geometry geometry_nhwc(const at::Tensor& x, int64_t K, int64_t stride, int64_t dilation) {
  Geometry g = geometry(x.permute({0, 3, 1, 2}), K, stride, dilation);
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous(), "ddf_cpu (NHWC): x must be a contiguous CPU tensor");
  return g;
}

at::Tensor ddf_forward_nhwc(const at::Tensor& x, const at::Tensor& ch, const at::Tensor& sp, int64_t kernel_size,
                            int64_t dilation, int64_t stride, bool mul) {
  const Geometry g = geometry_nhwc(x, kernel_size, stride, dilation);
  TORCH_CHECK(ch.is_contiguous() && ch.numel() == g.N * g.KK * g.C, "channel filter must be (N, KK, C)");
  TORCH_CHECK(sp.is_contiguous() && sp.numel() == g.N * g.Ho * g.Wo * g.KK, "spatial filter must be (N, Ho, Wo, KK)");
  auto y = at::empty({g.N, g.Ho, g.Wo, g.C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ddf_forward_nhwc", [&] {
    auto f = mul ? forward_nhwc<scalar_t, true> : forward_nhwc<scalar_t, false>;
    f(g, x.data_ptr<scalar_t>(), ch.data_ptr<scalar_t>(), sp.data_ptr<scalar_t>(), y.data_ptr<scalar_t>());
  });
  return y;
}

std::vector<at::Tensor> ddf_backward_nhwc(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& ch,
                                          const at::Tensor& sp, int64_t kernel_size, int64_t dilation,
                                          int64_t stride, bool mul) {
  const Geometry g = geometry_nhwc(x, kernel_size, stride, dilation);
  auto go = grad_out.contiguous();
  auto gx = at::empty_like(x);
  auto gsp = at::empty_like(sp);
  auto rows = at::empty({g.N, g.Ho, g.KK, g.C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ddf_backward_nhwc", [&] {
    auto filters = mul ? backward_filters_nhwc<scalar_t, true> : backward_filters_nhwc<scalar_t, false>;
    auto input = mul ? backward_input_nhwc<scalar_t, true> : backward_input_nhwc<scalar_t, false>;
    filters(g, go.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), ch.data_ptr<scalar_t>(), sp.data_ptr<scalar_t>(),
            rows.data_ptr<scalar_t>(), gsp.data_ptr<scalar_t>());
    input(g, go.data_ptr<scalar_t>(), ch.data_ptr<scalar_t>(), sp.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>());
  });
  return {gx, rows.sum(1), gsp};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &ddf_forward, "DDF forward (CPU)");
  m.def("backward", &ddf_backward, "DDF backward (CPU): grad input, grad channel filter, grad spatial filter");
  m.def("forward_nhwc", &ddf_forward_nhwc, "DDF forward (CPU, channels-last)");
  m.def("backward_nhwc", &ddf_backward_nhwc, "DDF backward (CPU, channels-last)");
}
