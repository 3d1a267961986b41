// CUDA check of moonwatch's region-head path (eval-callback capture, two-way embedding
// prefix, embedding steps) with the same llama.cpp; writes captured vectors as raw f32.
#include "llama.h"
#include "mtmd.h"
#include "gguf.h"
#include "ggml.h"
#include "ggml-backend.h"
#include <cstdio>
#include <cstring>
#include <cmath>
#include <string>
#include <vector>

struct Cap { std::string names[2]; std::vector<float> rows[2]; bool seen[2]; bool on; };
static bool cb(ggml_tensor * t, bool ask, void * ud) {
    Cap * c = (Cap *) ud;
    if (!c->on) return !ask;
    int i = -1;
    for (int k = 0; k < 2; k++) if (c->names[k] == t->name) i = k;
    if (i < 0) return !ask;
    if (ask) return true;
    int w = t->ne[0]; size_t rows = ggml_nelements(t) / w;
    c->rows[i].resize(w);
    ggml_backend_tensor_get(t, c->rows[i].data(), (rows - 1) * w * 4, w * 4);
    c->seen[i] = true;
    return true;
}
static void dump(const char * path, const std::vector<float> & v) {
    FILE * f = fopen(path, "wb"); fwrite(v.data(), 4, v.size(), f); fclose(f);
}
static int decode(llama_context * ctx, const float * embd, const int * tok, int n, int n_embd, int pos) {
    llama_batch b = llama_batch_init(n, embd ? n_embd : 0, 1);
    for (int i = 0; i < n; i++) {
        if (embd) memcpy(b.embd + i * n_embd, embd + i * n_embd, n_embd * 4); else b.token[i] = tok[i];
        b.pos[i] = pos + i; b.n_seq_id[i] = 1; b.seq_id[i][0] = 0; b.logits[i] = i == n - 1;
    }
    b.n_tokens = n;
    int rc = llama_decode(ctx, b);
    llama_batch_free(b);
    return rc;
}
static int argmax(const float * v, int n) { int b = 0; for (int i = 1; i < n; i++) if (v[i] > v[b]) b = i; return b; }

int main(int argc, char ** argv) {
    if (argc < 7) { fprintf(stderr, "usage: text mmproj region rgb ngl outdir\n"); return 2; }
    const char * text = argv[1], * mmproj = argv[2], * region = argv[3], * rgb = argv[4];
    int ngl = atoi(argv[5]); std::string out = argv[6];
    llama_backend_init();
    auto mp = llama_model_default_params(); mp.n_gpu_layers = ngl;
    llama_model * model = llama_model_load_from_file(text, mp);
    if (!model) { fprintf(stderr, "model load failed\n"); return 1; }
    int n_embd = llama_model_n_embd(model), n_layer = llama_model_n_layer(model);
    const llama_vocab * vocab = llama_model_get_vocab(model);
    int n_vocab = llama_vocab_n_tokens(vocab);
    // Region file: BOS embedding and the output norm.
    ggml_context * gctx = nullptr;
    gguf_init_params gp = { false, &gctx };
    gguf_context * g = gguf_init_from_file(region, gp);
    if (!g) { fprintf(stderr, "region read failed\n"); return 1; }
    float * bos = (float *) ggml_get_tensor(gctx, "text.bos_embd")->data;
    float * lnw = (float *) ggml_get_tensor(gctx, "text.post_ln.weight")->data;
    float * lnb = (float *) ggml_get_tensor(gctx, "text.post_ln.bias")->data;
    Cap cap; cap.names[0] = "l_out-" + std::to_string(n_layer - 1); cap.names[1] = "result_norm"; cap.on = false;
    auto cp = llama_context_default_params();
    cp.n_ctx = 2048; cp.n_batch = 1024; cp.n_ubatch = 1024; cp.n_threads = 8; cp.n_threads_batch = 8;
    cp.cb_eval = cb; cp.cb_eval_user_data = &cap;
    llama_context * ctx = llama_init_from_model(model, cp);
    // 1. Warm-up BOS with capture: post_ln(l_out) must equal result_norm.
    cap.on = true; cap.seen[0] = cap.seen[1] = false;
    int bos_tok = 50256;
    if (decode(ctx, nullptr, &bos_tok, 1, n_embd, 0)) { fprintf(stderr, "decode failed\n"); return 1; }
    double mean = 0, var = 0; auto & h = cap.rows[0];
    for (float v : h) mean += v; mean /= n_embd;
    for (float v : h) var += (v - mean) * (v - mean); var /= n_embd;
    double worst = 0, scale = 1;
    for (int i = 0; i < n_embd; i++) {
        double ln = (h[i] - mean) / sqrt(var + 1e-5) * lnw[i] + lnb[i];
        worst = fmax(worst, fabs(ln - cap.rows[1][i])); scale = fmax(scale, fabs(cap.rows[1][i]));
    }
    printf("ngl=%d seen=%d,%d post_ln(l_out) vs result_norm: max diff %.3g (scale %.3g)\n", ngl, cap.seen[0], cap.seen[1], worst, scale);
    cap.on = false;
    llama_memory_clear(llama_get_memory(ctx), true);
    // 2. Image embeddings.
    auto mtp = mtmd_context_params_default(); mtp.use_gpu = ngl > 0; mtp.n_threads = 8; mtp.print_timings = false;
    mtmd_context * mt = mtmd_init_from_file(mmproj, model, mtp);
    std::vector<unsigned char> px(378 * 378 * 3);
    FILE * f = fopen(rgb, "rb"); if (!f || fread(px.data(), 1, px.size(), f) != px.size()) { fprintf(stderr, "rgb\n"); return 1; } fclose(f);
    mtmd_bitmap * bm = mtmd_bitmap_init(378, 378, px.data());
    mtmd_input_chunks * ch = mtmd_input_chunks_init();
    mtmd_input_text it = { mtmd_default_marker(), strlen(mtmd_default_marker()), false, true };
    const mtmd_bitmap * bms[1] = { bm };
    if (mtmd_tokenize(mt, ch, &it, bms, 1)) { fprintf(stderr, "tokenize\n"); return 1; }
    const mtmd_input_chunk * img = nullptr;
    for (size_t i = 0; i < mtmd_input_chunks_size(ch); i++) if (mtmd_input_chunk_get_type(mtmd_input_chunks_get(ch, i)) == MTMD_INPUT_CHUNK_TYPE_IMAGE) img = mtmd_input_chunks_get(ch, i);
    if (mtmd_encode_chunk(mt, img)) { fprintf(stderr, "encode\n"); return 1; }
    int n_img = mtmd_input_chunk_get_n_tokens(img);
    std::vector<float> prefix(bos, bos + n_embd);
    float * e = mtmd_get_output_embd(mt);
    prefix.insert(prefix.end(), e, e + (size_t) n_img * n_embd);
    dump((out + "/image.f32").c_str(), std::vector<float>(e, e + (size_t) n_img * n_embd));
    // 3. Two-way prefix, then the detect prompt for " cat" with capture.
    llama_set_causal_attn(ctx, false);
    if (decode(ctx, prefix.data(), nullptr, n_img + 1, n_embd, 0)) { fprintf(stderr, "prefix decode\n"); return 1; }
    llama_set_causal_attn(ctx, true);
    int prompt[6] = { 198, 198, 47504, 25, 3797, 628 };
    cap.on = true; cap.seen[0] = cap.seen[1] = false;
    if (decode(ctx, nullptr, prompt, 6, n_embd, n_img + 1)) { fprintf(stderr, "prompt decode\n"); return 1; }
    dump((out + "/hidden0.f32").c_str(), cap.rows[0]);
    const float * lg = llama_get_logits_ith(ctx, -1);
    printf("ngl=%d image tokens %d, first token %d, hidden seen %d\n", ngl, n_img, argmax(lg, n_vocab), cap.seen[0]);
    // 4. One embedding step (the prefix's BOS row fed again stands in for an encoded x).
    cap.seen[0] = false;
    if (decode(ctx, bos, nullptr, 1, n_embd, n_img + 1 + 6)) { fprintf(stderr, "step decode\n"); return 1; }
    dump((out + "/hidden1.f32").c_str(), cap.rows[0]);
    printf("ngl=%d embedding step hidden seen %d, token %d\n", ngl, cap.seen[0], argmax(llama_get_logits_ith(ctx, -1), n_vocab));
    return 0;
}
